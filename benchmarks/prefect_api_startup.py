"""The temporary Prefect API: what a command without PREFECT_API_URL waits for before its first stage.

    uv run python benchmarks/prefect_api_startup.py [--runs 3] [--json out.json]

Two measures, each on a new PREFECT_HOME (cold: its database is created and migrated) and again on the same
one (warm):
- `fedrisk retrain` on the demo consortium as a user runs it: seconds from the command's start until it
  says it starts the API, and until its first stage ("validating ..."), where the command is stopped;
- the API alone, started as the commands start it (flows.prefect_api.prefect_api, in a fresh interpreter):
  seconds until /health answers; and what importing Prefect's server costs a fresh interpreter.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, write_json

BIN = Path(sys.executable).parent
ALONE = """
import sys, time
from pathlib import Path
started = time.monotonic()
from flows.prefect_api import prefect_api
with prefect_api(600, Path(sys.argv[1])):
    print(time.monotonic() - started, flush=True)
"""


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    return {
        **env,
        "PREFECT_HOME": str(home / "prefect"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "FEDRISK_RUNS_DIR": str(home / "runs"),
        "FEDRISK_LOG_FILE": str(home / "fedrisk.log"),
        "COLUMNS": "200",
    }


def to_first_stage(home: Path, config: Path) -> dict[str, float]:
    """`fedrisk retrain` until its first stage: seconds to 'starting a temporary Prefect API' and to 'validating'."""
    started = time.monotonic()
    process = subprocess.Popen(
        [str(BIN / "fedrisk"), "retrain", "--config", str(config)],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    marks: dict[str, float] = {}
    try:
        for line in process.stdout:
            if "starting a temporary Prefect API" in line:
                marks["says it starts the API"] = time.monotonic() - started
            if "validating " in line:
                marks["first stage (validating)"] = time.monotonic() - started
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # measured; its temporary API dies with it (an owned child)
        process.wait(timeout=60)
    assert "first stage (validating)" in marks, f"no first stage (exit {process.returncode})"
    return marks


def api_alone(home: Path) -> float:
    env = {**_env(home), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", ALONE, str(home)], env=env, capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.split()[-1])


def import_server_seconds() -> float:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time; t = time.perf_counter(); import prefect.server.api.server; print(time.perf_counter() - t)",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return float(done.stdout.split()[-1])


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runs: dict[str, list] = {
        "command cold": [],
        "command warm": [],
        "api alone cold": [],
        "api alone warm": [],
        "import prefect.server.api.server": [],
    }
    with tempfile.TemporaryDirectory(prefix="fedrisk-bench-") as scratch:
        data = Path(scratch) / "data"
        subprocess.run(
            [str(BIN / "fedrisk"), "data", "synth", "--out", str(data)],
            check=True,
            capture_output=True,
            env=_env(Path(scratch)),
        )
        config = Path(scratch) / "demo.yaml"
        config.write_text((ROOT / "configs" / "demo.yaml").read_text().replace("../data/demo", str(data)))
        for run in range(args.runs):
            home = Path(scratch) / f"run{run}"
            runs["command cold"].append(to_first_stage(home, config))
            runs["command warm"].append(to_first_stage(home, config))
            alone = Path(scratch) / f"alone{run}"
            runs["api alone cold"].append(api_alone(alone))
            runs["api alone warm"].append(api_alone(alone))
            runs["import prefect.server.api.server"].append(import_server_seconds())
    summary: dict = {}
    for name, values in runs.items():
        if values and isinstance(values[0], dict):
            summary[name] = {mark: _summary([v[mark] for v in values]) for mark in values[0]}
        else:
            summary[name] = {"seconds": _summary(values)}
        for mark, figures in summary[name].items():
            print(f"{name:<34} {mark:<26} {figures['median']:6.1f} s  ({figures['min']:.1f}-{figures['max']:.1f})")
    print(f"written to {write_json(args.json, 'prefect_api_startup', args, {'runs': runs, 'summary': summary})}")


if __name__ == "__main__":
    main()
