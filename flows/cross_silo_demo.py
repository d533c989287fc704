"""`fedrisk demo --cross-silo`: the demo consortium as nodes on this machine, one process per institution.

Each institution gets a directory of its own holding only its extract, its certificate and key, the CA's
certificate and its node config; its node listens on a loopback port. The coordinator's config names the
nodes' addresses and no path to any data. The nodes are this command's children: they end with it.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from engines.registry import engine_for
from hostguard.processes import spawn_owned, stop
from runconfig import RunConfig, TlsConfig

COORDINATOR = "coordinator"
_READY_TIMEOUT_S = 300.0


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_config(
    name: str,
    directory: Path,
    schema: str,
    extract: Path,
    port: int,
    members: list[str],
    monitoring: Path | None = None,
    model_kinds: list[str] | None = None,
) -> Path:
    """Write an institution's node directory: its extract, TLS files and config (the consortium's `members`, with
    whom it takes part in secure sums; `monitoring`, the file monitoring will read; `model_kinds`, what its policy
    trains: all by default); return the config's path."""
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "institution": name,
        "listen": f"127.0.0.1:{port}",
        "schema": schema,
        "extract": {"path": extract.name},
        **({"monitoring": {"path": str(monitoring)}} if monitoring is not None else {}),
        "coordinator": COORDINATOR,
        "work_dir": "state",
        "tls": {"ca": "tls/ca.crt", "cert": f"tls/{name}.crt", "key": f"tls/{name}.key"},
    }
    if len(members) >= 3:  # a secure sum needs at least three
        data["consortium"] = {"members": list(members)}
    if model_kinds is not None:
        data["policy"] = {"model_kinds": list(model_kinds)}
    path = directory / "node.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _wait_listening(process, log: Path, name: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while "listening on" not in (log.read_text() if log.exists() else ""):
        if process.poll() is not None:
            raise RuntimeError(f"node {name} exited ({process.returncode}) on start; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"node {name} did not start in {_READY_TIMEOUT_S:g} s; see {log}")
        time.sleep(0.2)


@contextmanager
def nodes_for(config: RunConfig, work_dir: Path, console) -> Iterator[RunConfig]:
    """Start a node per institution of `config` (simulation paths; each node gets a copy of its institution's
    extract and of its monitoring_path) under `work_dir`; yield the coordinator's config (nodes only, mutual TLS);
    stop the nodes by pid when the block ends."""
    from hostguard.pki import init_ca, issue

    work_dir = Path(work_dir).resolve()
    shutil.rmtree(work_dir, ignore_errors=True)
    pki = work_dir / "pki"
    init_ca(pki)
    issue(pki, COORDINATOR, ("localhost", "127.0.0.1"))
    processes, institutions = [], []
    trees = "gradient_boosted_trees"
    try:
        for institution in config.institutions:
            name, directory = institution.name, work_dir / institution.name
            (directory / "tls").mkdir(parents=True)
            issue(pki, name, ("localhost", "127.0.0.1"))
            for file in ("ca.crt", f"{name}.crt", f"{name}.key"):
                shutil.copy(pki / file, directory / "tls" / file)
            shutil.copy(institution.path, directory / institution.path.name)  # only its own rows
            month = None
            if institution.monitoring_path is not None:  # and its own month of the scoring population
                month = directory / "monitoring" / institution.monitoring_path.name
                month.parent.mkdir()
                if institution.monitoring_path.exists():  # a month not landed yet is named when monitoring runs
                    shutil.copy(institution.monitoring_path, month)
            port = _free_port()
            path = node_config(
                name,
                directory,
                config.data_schema.name,
                directory / institution.path.name,
                port,
                [i.name for i in config.institutions],
                month,
                # A node for a tree training trains only trees: it loads no TensorFlow (a smaller, faster node).
                ["gradient_boosted_trees"] if engine_for(config.training).architecture(config).kind == trees else None,
            )
            log = directory / "node.log"
            processes.append(
                (
                    name,
                    log,
                    spawn_owned(
                        [sys.executable, "-m", "flows.cli", "node", "serve", "--config", str(path)], log, cwd=directory
                    ),
                )
            )
            institutions.append({"name": name, "node": f"127.0.0.1:{port}"})
        console.print(
            f"Starting {len(processes)} institution nodes under {work_dir} (one process and directory "
            f"each, mutual TLS on loopback) ..."
        )
        for name, log, process in processes:
            _wait_listening(process, log, name)
        coordinator = RunConfig.model_validate(
            {
                **config.plain(),
                "institutions": institutions,
                "baselines": {"enabled": False},
                "tls": TlsConfig(ca=pki / "ca.crt", cert=pki / f"{COORDINATOR}.crt", key=pki / f"{COORDINATOR}.key"),
            }
        )
        yield coordinator
    finally:
        for _, _, process in processes:
            stop(process)
