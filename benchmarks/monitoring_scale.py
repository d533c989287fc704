"""Monitoring one month at scale: seconds per institution and for the whole consortium, and the bytes that leave each
institution, for `--rows` rows at each of `--institutions` institutions.

    uv run fedrisk demo                                   # once: a champion to monitor
    uv run python benchmarks/monitoring_scale.py          # --rows 100000 --institutions 3 --model credit_default_demo

Writes a later month of the demo portfolios (the first `--institutions`, each grown to `--rows` rows, with
matured outcomes), then (1) in this process, each institution's monitoring function (`monitor_extract`: read,
check, score with the champion, count) timed on its own, with the size of what it returns as JSON (what a node's
answer carries); and (2) `fedrisk monitor --config` in a fresh process, start to exit (it logs a monitoring run
beside the champion, as a scheduled monitoring would). Figures: benchmarks/results/monitoring_scale.json.
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
    result = {
        "model": f"{args.model} version {monitored.version}",
        "rows_per_institution": args.rows,
        "institutions": institutions,
        "command_seconds": round(command_seconds, 1),
        "command_exit": done.returncode,
    }
    print(f"wrote {write_json(args.json, 'monitoring_scale', args, result)}")


if __name__ == "__main__":
    main()
