"""Where the temporary Prefect API's start-up goes: what `fedrisk retrain` / `demo` wait for before the first
stage when no PREFECT_API_URL is set.

    uv run python benchmarks/prefect_api_startup.py [--runs 3] [--json out.json]

Each run starts the API exactly as the commands do (flows.prefect_api.prefect_api, in a fresh interpreter),
on a new PREFECT_HOME (cold: the database is created and migrated) and then again on the same one (warm), and
times when each line of its log appears: the server process started (Python and Prefect's imports), the
application's start-up began and completed (database migrations, services), and when /health answered.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, write_json

MARKS = {"Started server process": "server process started (imports)",
         "Waiting for application startup": "application start-up began",
         "Application startup complete": "application start-up complete (migrations, services)"}
PROBE = """
import sys, time
from pathlib import Path
started = time.monotonic()
from flows.prefect_api import prefect_api
with prefect_api(600, Path(sys.argv[1])) as url:
    print("ANSWERED", time.monotonic() - started, flush=True)
    (Path(sys.argv[1]) / "keep").write_text("")
"""


def one_start(home: Path) -> dict[str, float]:
    """Seconds from the command's start to each mark of the API's log, and to the first answer."""
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", PROBE, str(logs)], env=env, stdout=subprocess.PIPE, text=True,
                               cwd=ROOT)
    seen: dict[str, float] = {}
    while process.poll() is None:
        for log in logs.glob("prefect-api-*.log"):
            text = log.read_text(errors="replace")
            for mark, stage in MARKS.items():
                if mark in text and stage not in seen:
                    seen[stage] = time.monotonic() - started
        time.sleep(0.02)
    answered = [line for line in process.stdout.read().splitlines() if line.startswith("ANSWERED")]
    assert process.returncode == 0 and answered, f"the temporary API did not start (exit {process.returncode})"
    seen["answered /health (what the command waits for)"] = float(answered[0].split()[1])
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="fedrisk-prefect-home-") as home:
            results["cold"].append(one_start(Path(home)))  # a new database: created and migrated
            results["warm"].append(one_start(Path(home)))  # the same database again
    summary = {}
    for kind, runs in results.items():
        print(f"{kind} ({len(runs)} runs), seconds from the command's start (median, min-max):")
        summary[kind] = {}
        for stage in runs[0]:
            values = [r[stage] for r in runs if stage in r]
            summary[kind][stage] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
            print(f"  {stage:<60} {statistics.median(values):6.1f}  ({min(values):.1f}-{max(values):.1f})")
    print(f"written to {write_json(args.json, 'prefect_api_startup', args, {'runs': results, 'summary': summary})}")


if __name__ == "__main__":
    main()
