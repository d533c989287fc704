"""Federated gradient-boosted trees: XGBoost's federated server and one worker process per institution.

Each institution's worker reads only that institution's rows and computes gradient histograms on them;
the server sums the histograms (it sees them per institution: not rows, but not nothing) and every worker
grows the same trees. Federated validation (log loss and AUC over every institution's validation rows)
picks the number of trees and stops early. Mutual TLS between workers and server with certificates made
for the run. All processes are this process's children (stopped by pid; they end with it); in simulation
the server, which binds every interface, is kept on loopback like TFF's worker.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fed_trees.spec import TreeSpec
from hostguard import loopback
from hostguard.processes import spawn_owned, stop

_START_TIMEOUT_S = 120.0


class FederatedTreesUnavailable(RuntimeError):
    """The installed XGBoost has no federated mode."""


class TreeTrainingFailed(RuntimeError):
    """A worker or the server failed; nothing was trained to completion."""


@dataclass(frozen=True)
class TreeData:
    """One institution's rows for tree training, encoded by the run's layout (they stay at the institution)."""

    institution: str
    x_fit: np.ndarray
    y_fit: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray


@dataclass(frozen=True)
class TreeTls:
    """Mutual TLS of a training: the CA both sides trust, the server's certificate (for the address workers dial)
    and each institution's worker certificate and key."""

    ca: Path
    server_cert: Path
    server_key: Path
    workers: dict[str, tuple[Path, Path]]


@dataclass(frozen=True)
class TreeResult:
    booster: Path
    rounds: list[dict]
    best_round: int
    stopped_early: bool


def require_federated_build() -> None:
    import xgboost

    if not xgboost.build_info().get("USE_FEDERATED"):
        raise FederatedTreesUnavailable(
            f"the installed xgboost {xgboost.__version__} was built without federated mode "
            f"(xgboost.build_info()['USE_FEDERATED'] is false): install the standard manylinux_2_28 x86_64 wheel "
            f"(uv sync does), not the CPU-only manylinux2014 one"
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _wait_for_server(process, port: int, log: Path, isolation: loopback.Isolation) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not any(p == port for _, p in loopback.listening_addresses(process.pid)):
        if process.poll() is not None:
            raise TreeTrainingFailed(
                f"the XGBoost federated server exited ({process.returncode}) on start:\n{_tail(log)}"
            )
        if time.monotonic() > deadline:
            raise TreeTrainingFailed(f"the XGBoost federated server did not listen in {_START_TIMEOUT_S:g} s")
        time.sleep(0.05)
    if not isolation.exposed:
        loopback.require_loopback(process.pid, "XGBoost federated server")


def run_certificates(directory: Path, names: list[str]) -> TreeTls:
    """A CA for this training only, the server's certificate (for localhost, which workers dial) and one per worker."""
    from hostguard.pki import init_ca, issue

    init_ca(directory, "fedrisk federated trees (this run)")
    server_cert, server_key = issue(directory, "localhost", ("localhost", "127.0.0.1"))
    return TreeTls(directory / "ca.crt", server_cert, server_key, {name: issue(directory, name) for name in names})


def start_server(
    n_workers: int, tls: TreeTls | None, work_dir: Path, isolation: loopback.Isolation
) -> tuple[object, int]:
    """XGBoost's federated server for `n_workers`, as a child process on a free port, kept on loopback unless
    `isolation` is an accepted exposure. `tls` None: plain gRPC, for fed_trees.gate alone to reach (across silos)."""
    port = _free_port()
    log = Path(work_dir) / "server.log"
    certificates = [str(tls.server_key), str(tls.server_cert), str(tls.ca)] if tls is not None else []
    server = spawn_owned(
        [sys.executable, "-m", "fed_trees.server", str(n_workers), str(port), *certificates],
        log,
        env={**os.environ, **isolation.environment()},
    )
    try:
        _wait_for_server(server, port, log, isolation)
    except BaseException:
        stop(server)
        raise
    return server, port


def start_worker(
    data: TreeData,
    spec: TreeSpec,
    work_dir: Path,
    *,
    rank: int,
    world_size: int,
    server: str,
    ca: Path,
    cert: Path,
    key: Path,
) -> tuple[str, Path, object]:
    """One institution's worker process (it reads only `data`); rank 0 writes the booster and history."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = work_dir / f"{data.institution}.npz"
    np.savez(rows, x_fit=data.x_fit, y_fit=data.y_fit, x_validation=data.x_validation, y_validation=data.y_validation)
    job = work_dir / f"{data.institution}.json"
    job.write_text(
        json.dumps(
            {
                "rank": rank,
                "world_size": world_size,
                "server": server,
                "spec": spec.as_dict(),
                "data": str(rows),
                "output": str(work_dir),
                "tls": {"ca": str(ca), "cert": str(cert), "key": str(key)},
            }
        )
    )
    log = work_dir / f"{data.institution}.log"
    return data.institution, log, spawn_owned([sys.executable, "-m", "fed_trees.worker", str(job)], log)


def read_result(work_dir: Path, spec: TreeSpec) -> TreeResult:
    """Rank 0's booster and the federated validation history it wrote."""
    saved = json.loads((Path(work_dir) / "history.json").read_text())
    losses, aucs = saved["history"].get("logloss", []), saved["history"].get("auc", [])
    rounds = [
        {"round": i + 1, "validation_loss": float(loss), "validation_auc": float(auc)}
        for i, (loss, auc) in enumerate(zip(losses, aucs, strict=True))
    ]
    return TreeResult(Path(work_dir) / "booster.json", rounds, saved["best_iteration"] + 1, len(rounds) < spec.rounds)


def run_worker(
    data: TreeData,
    spec: TreeSpec,
    work_dir: Path,
    *,
    rank: int,
    world_size: int,
    server: str,
    ca: Path,
    cert: Path,
    key: Path,
    timeout: float = 3600.0,
) -> TreeResult | None:
    """A node's part of a cross-silo training: its institution's worker, until the training ends. Rank 0
    returns the result (every worker holds the same trees)."""
    require_federated_build()
    worker = start_worker(
        data, spec, work_dir, rank=rank, world_size=world_size, server=server, ca=ca, cert=cert, key=key
    )
    try:
        _follow([worker], None, None, None, time.monotonic() + timeout)
    finally:
        stop(worker[2])
    return read_result(work_dir, spec) if rank == 0 else None


def train_federated(
    institutions: list[TreeData],
    spec: TreeSpec,
    work_dir: Path,
    *,
    isolation: loopback.Isolation,
    on_round: Callable[[dict], None] | None = None,
    tls: TreeTls | None = None,
    timeout: float = 3600.0,
) -> TreeResult:
    """Train `spec` over the institutions, each in its own worker process here (simulation); the booster is
    written to `work_dir`. `tls` defaults to certificates made for this training; a training not done in
    `timeout` seconds stops."""
    require_federated_build()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tls = tls or run_certificates(work_dir / "tls", [i.institution for i in institutions])
    server, port = start_server(len(institutions), tls, work_dir, isolation)
    workers = []
    try:
        for rank, institution in enumerate(institutions):
            cert, key = tls.workers[institution.institution]
            workers.append(
                start_worker(
                    institution,
                    spec,
                    work_dir,
                    rank=rank,
                    world_size=len(institutions),
                    server=f"localhost:{port}",
                    ca=tls.ca,
                    cert=cert,
                    key=key,
                )
            )
        _follow(workers, server, work_dir / "server.log", on_round, time.monotonic() + timeout)
    finally:
        for _, _, process in workers:
            stop(process)
        stop(server)
    return read_result(work_dir, spec)


def round_figures(line: str) -> dict | None:
    """One boosting round's federated validation figures from a line of rank 0's worker log (fed_trees.worker prints
    them as JSON); None for any other line."""
    if not (line.startswith("{") and line.rstrip().endswith("}")):
        return None
    try:
        figures = json.loads(line)
        return {
            "round": int(figures["round"]),
            "validation_loss": float(figures["validation_loss"]),
            "validation_auc": float(figures["validation_auc"]),
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _follow(workers, server, server_log: Path, on_round, deadline: float) -> None:
    """Pass rank 0's rounds to `on_round` as they come; wait for every worker; a failure stops them all."""
    _, first_log, _ = workers[0]
    read = 0

    def pass_new_rounds() -> None:
        """The round lines rank 0 has completed since the last look (a line still being written waits)."""
        nonlocal read
        if on_round is None or not first_log.exists():
            return
        with first_log.open("rb") as log:
            log.seek(read)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        read += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            figures = round_figures(line)
            if figures is not None:
                on_round(figures)

    while True:
        pass_new_rounds()
        failed = [(name, log, p.returncode) for name, log, p in workers if p.poll() not in (None, 0)]
        if failed:
            name, log, code = failed[0]
            raise TreeTrainingFailed(
                f"the XGBoost worker of institution '{name}' exited with code {code}; the "
                f"training stopped and nothing was registered:\n{_tail(log)}"
            )
        if server is not None and server.poll() not in (None, 0):
            raise TreeTrainingFailed(
                f"the XGBoost federated server exited with code {server.returncode}:\n{_tail(server_log)}"
            )
        if time.monotonic() > deadline:
            raise TreeTrainingFailed(
                "the XGBoost training did not finish in time; its processes were stopped and nothing was registered"
            )
        if all(p.poll() == 0 for _, _, p in workers):
            pass_new_rounds()
            return
        time.sleep(0.1)


def train_centralized(x_fit, y_fit, x_validation, y_validation, spec: TreeSpec, path: Path) -> TreeResult:
    """The same trees on rows in one place (baselines, benchmarks): same parameters, same early stopping."""
    import xgboost

    matrices = {
        part: xgboost.DMatrix(x, label=y, feature_types=list(spec.feature_types) or None, enable_categorical=True)
        for part, x, y in (("fit", x_fit, y_fit), ("validation", x_validation, y_validation))
    }
    history: dict = {}
    booster = xgboost.train(
        spec.params(),
        matrices["fit"],
        num_boost_round=spec.rounds,
        evals=[(matrices["validation"], "validation")],
        evals_result=history,
        early_stopping_rounds=spec.early_stopping_rounds,
        verbose_eval=False,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))
    losses, aucs = history["validation"]["logloss"], history["validation"]["auc"]
    best = getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1)
    return TreeResult(
        Path(path),
        [
            {"round": i + 1, "validation_loss": float(a), "validation_auc": float(b)}
            for i, (a, b) in enumerate(zip(losses, aucs, strict=True))
        ],
        best + 1,
        len(losses) < spec.rounds,
    )
