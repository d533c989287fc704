"""Monitoring one month at scale: seconds per institution and for the whole consortium, and the bytes that leave each
institution, for `--rows` rows at each of `--institutions` institutions.

    uv run fedrisk demo                                   # once: a champion to monitor
    uv run python benchmarks/monitoring_scale.py          # --rows 100000 --institutions 3 --model credit_default_demo

Writes a later month of the demo portfolios (the first `--institutions`, each grown to `--rows` rows, with
matured outcomes), then (1) in this process, each institution's monitoring function (`monitor_extract`: read,
check, score with the champion, count) timed on its own, with the size of what it returns as JSON (what a node's
answer carries); and (2) `fedrisk monitor --config` in a fresh process, start to exit (it logs a monitoring run
beside the champion, as a scheduled monitoring would). With `--across-nodes`, also (3) the same month at node
processes under secure aggregation: a small model trained across the nodes first (a node counts only with a
challenger it evaluated), then `fedrisk monitor --config` start to exit, and the bytes each node returned while
monitoring, read from its own audit trail. Figures: benchmarks/results/monitoring_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import yaml
from common import ROOT, write_json

from contract.synthetic import PORTFOLIOS, synthesize
from flows.settings import Settings
from institution.monitoring import monitor_extract
from riskmodel import model as exported
from tracking.monitoring import monitored_version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--institutions", type=int, default=3)
    parser.add_argument("--model", default="credit_default_demo")
    parser.add_argument("--across-nodes", action="store_true", help="also at node processes, secure aggregation on")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/monitoring_scale.json")
    args = parser.parse_args()
    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="fedrisk-monitoring-bench-") as scratch:
        root = Path(scratch)
        chosen = [p.name for p in PORTFOLIOS[: args.institutions]]
        started = time.perf_counter()
        months = synthesize(
            root / "month", args.institutions, seed=101, changes={n: {"rows": args.rows} for n in chosen}
        )
        print(f"wrote {args.institutions} x {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        monitored = monitored_version(settings.mlflow_tracking_uri, args.model, "champion", None, root / "model")
        model = exported.load(monitored.model_path)
        institutions = {}
        for name, path in months.items():
            begin = time.perf_counter()
            extract = monitor_extract(path, monitored.schema, model)
            seconds = time.perf_counter() - begin
            sent = len(json.dumps(asdict(extract.counts)).encode())
            institutions[name] = {
                "rows": extract.rows,
                "file_mb": round(path.stat().st_size / 1e6, 1),
                "seconds": round(seconds, 2),
                "rows_per_second": round(extract.rows / seconds),
                "bytes_sent": sent,
            }
            print(f"{name}: {extract.rows:,} rows in {seconds:.2f} s; {sent:,} bytes of counts leave it")

        # The whole command, as a user runs it: it logs a monitoring run beside the champion in the store.
        config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
        config["institutions"] = [
            {**i, "path": str((ROOT / "configs" / i["path"]).resolve()), "monitoring_path": str(months[i["name"]])}
            for i in config["institutions"]
            if i["name"] in months
        ]
        config["model_name"], config["quorum"] = args.model, 1
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "PREFECT_HOME": str(root)}
        begin = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "monitor", "--config", str(root / "config.yaml")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        command_seconds = time.perf_counter() - begin
        if done.returncode not in (0, 6):
            sys.exit(f"fedrisk monitor failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        status = "act" if done.returncode == 6 else "stable or warn"
        print(f"fedrisk monitor --config: {command_seconds:.1f} s start to exit ({status})")
        nodes = across_nodes(months, root) if args.across_nodes else None
    result = {
        "model": f"{args.model} version {monitored.version}",
        "rows_per_institution": args.rows,
        "institutions": institutions,
        "command_seconds": round(command_seconds, 1),
        "command_exit": done.returncode,
        **({"across_nodes": nodes} if nodes else {}),
    }
    print(f"wrote {write_json(args.json, 'monitoring_scale', args, result)}")


class _Console:
    def print(self, *args, **kwargs) -> None:
        print(*args, flush=True)


def _fedrisk(arguments: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *arguments], cwd=ROOT, env=env, capture_output=True, text=True
    )


def across_nodes(months: dict[str, Path], root: Path) -> dict:
    """The month's extracts counted at one node process each, under secure aggregation: seconds of `fedrisk monitor
    --config` start to exit, and the bytes each node returned while monitoring (its audit trail's own count)."""
    from flows.config import parse_config
    from flows.cross_silo_demo import nodes_for

    training = synthesize(root / "train", len(months), seed=7)
    config = parse_config(
        {
            "model_name": "monitoring_bench",
            "quorum": len(months),
            "institutions": [
                {"name": n, "path": str(training[n]), "monitoring_path": str(path)} for n, path in months.items()
            ],
            "training": {"rounds": 3, "model": {"kind": "logistic_regression"}},
            "baselines": {"enabled": False},
        },
        root,
    )
    store = f"sqlite:///{root / 'nodes-mlruns' / 'mlflow.db'}"
    env = {**os.environ, "PREFECT_HOME": str(root), "MLFLOW_TRACKING_URI": store}
    with nodes_for(config, root / "nodes", _Console()) as coordinator:
        plain = {**coordinator.plain(), "secure_aggregation": True}
        (root / "nodes.yaml").write_text(yaml.safe_dump(plain))
        trained = _fedrisk(["retrain", "--config", str(root / "nodes.yaml")], env)
        if trained.returncode != 0:
            sys.exit(f"fedrisk retrain across nodes failed:\n{trained.stdout[-3000:]}{trained.stderr[-3000:]}")
        trails = {n: root / "nodes" / n / "state" / "audit.jsonl" for n in months}
        before = {n: len(trail.read_text().splitlines()) for n, trail in trails.items()}
        begin = time.perf_counter()
        done = _fedrisk(["monitor", "--config", str(root / "nodes.yaml")], env)
        seconds = time.perf_counter() - begin
    if done.returncode not in (0, 6):
        sys.exit(
            f"fedrisk monitor across nodes failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    sent = {}
    for name, trail in trails.items():
        entries = [json.loads(line) for line in trail.read_text().splitlines()[before[name] :]]
        sent[name] = {
            "bytes_returned": sum(e["bytes_returned"] for e in entries),
            "requests": sorted({e["operation"] for e in entries}),
        }
        print(f"{name} (node, secure sum): {sent[name]['bytes_returned']:,} bytes returned while monitoring")
    print(f"fedrisk monitor --config across {len(months)} nodes, secure aggregation: {seconds:.1f} s start to exit")
    return {"command_seconds": round(seconds, 1), "command_exit": done.returncode, "nodes": sent}


if __name__ == "__main__":
    main()
