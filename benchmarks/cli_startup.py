"""How long the CLI's read-only commands take, start to finish, in fresh processes; and what they import.

    uv run fedrisk demo                                  # once: a registered model to read
    uv run python benchmarks/cli_startup.py [--model credit_default_demo] [--repeats 5]
    uv run python benchmarks/cli_startup.py --tracking-uri http://127.0.0.1:5000  # through a tracking server

Runs `fedrisk --help`, `fedrisk models list MODEL`, `fedrisk ledger` and `fedrisk lineage MODEL@champion`
against the project's MLflow store (MLFLOW_TRACKING_URI, or --tracking-uri), each `--repeats` times in a
new interpreter, and reports the median wall time and whether TensorFlow, Prefect or scikit-learn were
imported (none should be: a read-only command reads MLflow and nothing else). The target is under 5 s.

Each command is timed twice over: with the environment's bytecode caches (`__pycache__`, written by Python on
first import, or by `uv sync --compile-bytecode`) and without any (an empty PYTHONPYCACHEPREFIX and
PYTHONDONTWRITEBYTECODE=1: every module compiled from source, as in an image that sets PYTHONDONTWRITEBYTECODE
and was installed without compiling). The script says whether the environment's packages have caches.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, write_json

HEAVY = ("tensorflow", "tensorflow_federated", "prefect", "sklearn", "great_expectations", "xgboost")
RUN = """
import atexit, json, sys
def record():
    with open({out!r}, "w") as f:
        json.dump(sorted(m for m in {heavy!r} if m in sys.modules), f)
atexit.register(record)
sys.argv = ["fedrisk", *{args!r}]
from flows.cli import app
app()
"""


def time_command(args: list[str], env: dict, repeats: int) -> dict:
    """Median and each wall time of `fedrisk ARGS` in fresh interpreters, and the heavy modules it loaded."""
    seconds, loaded, code = [], [], 0
    for _ in range(repeats):
        if "PYTHONPYCACHEPREFIX" in env:  # a new, empty cache each time: nothing compiled before is found
            shutil.rmtree(env["PYTHONPYCACHEPREFIX"], ignore_errors=True)
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
            pass
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", RUN.format(out=out.name, heavy=HEAVY, args=args)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        seconds.append(time.perf_counter() - start)
        code = done.returncode
        loaded = json.loads(Path(out.name).read_text() or "[]")
        os.unlink(out.name)
    return {
        "command": "fedrisk " + " ".join(args),
        "median_seconds": statistics.median(seconds),
        "seconds": seconds,
        "exit_code": code,
        "heavy_imports": loaded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="credit_default_demo", help="A registered model to list and trace.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tracking-uri", help="An MLflow tracking URI (default: the project's store).")
    parser.add_argument("--json", type=Path, help="Where to write the figures (default benchmarks/results/).")
    args = parser.parse_args()
    env = {**os.environ, **({"MLFLOW_TRACKING_URI": args.tracking_uri} if args.tracking_uri else {})}
    cached = packages_have_bytecode_caches()
    print(
        f"bytecode caches in the environment's packages: {'yes' if cached else 'NO (uv sync --compile-bytecode)'}; "
        f"PYTHONDONTWRITEBYTECODE {'set' if os.environ.get('PYTHONDONTWRITEBYTECODE') else 'unset'}"
    )
    commands = [["--help"], ["models", "list", args.model], ["ledger"], ["lineage", f"{args.model}@champion"]]
    results = []
    with tempfile.TemporaryDirectory() as empty:
        conditions = {
            "with caches": env,
            "from source": {**env, "PYTHONPYCACHEPREFIX": empty, "PYTHONDONTWRITEBYTECODE": "1"},
        }
        for command in commands:
            for condition, condition_env in conditions.items():
                row = {
                    **time_command(command, condition_env, args.repeats),
                    "bytecode": condition,
                    "packages_have_bytecode_caches": cached,
                }
                results.append(row)
                print(
                    f"{row['command']:<45} {condition:<12} {row['median_seconds']:6.2f} s median of "
                    f"{args.repeats} (exit {row['exit_code']}; heavy imports: "
                    f"{', '.join(row['heavy_imports']) or 'none'})",
                    flush=True,
                )
    name = "cli_startup" + ("_tracking_server" if args.tracking_uri else "")
    print(f"written: {write_json(args.json, name, args, results)}")


def packages_have_bytecode_caches() -> bool:
    """Whether MLflow, the read-only commands' one heavy package, was compiled for this interpreter."""
    return Path(importlib.util.cache_from_source(importlib.util.find_spec("mlflow").origin)).exists()


if __name__ == "__main__":
    main()
