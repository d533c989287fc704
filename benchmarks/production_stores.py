"""What the production stores cost a retraining: `fedrisk demo` against a Prefect server and an MLflow tracking
server on PostgreSQL (with the database retraining lock) against the embedded defaults (a temporary Prefect
API, sqlite under mlruns/, the file lock).

    uv run python benchmarks/production_stores.py [--postgres postgresql://postgres@127.0.0.1:55432/postgres]
                                                  [--runs 2] [--json out.json]

Needs a PostgreSQL server (`.ci/run` shows how to start a throwaway one). Creates two databases on it,
starts `prefect server start` and `mlflow server --serve-artifacts` on loopback, and stops both by pid at the
end. Each set-up gets a fresh workspace; the demo's data is synthesized once, before any timing. Runs
alternate (embedded, production, embedded, ...): run 1 registers version 1, run 2 a challenger against it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import ROOT, write_json

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def create_database(postgres: str, name: str) -> str:
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as connection, connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    return postgres.rsplit("/", 1)[0] + f"/{name}"


def wait_healthy(url: str, process: subprocess.Popen, what: str, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not answer at {url} in {timeout:g} s")
        time.sleep(0.5)


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def timed_demo(env: dict, data_dir: Path, log: Path) -> float:
    start_time = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "fedrisk"), "demo", "--data-dir", str(data_dir)], env=env, cwd=ROOT, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start_time
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"fedrisk demo failed ({done.returncode}); see {log}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--postgres",
        default=os.environ.get("FEDRISK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:55432/postgres"),
    )
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fedrisk-production-bench-"))
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "FEDRISK_LOCK_DATABASE_URL")
    }
    data_dir = work / "demo-data"
    subprocess.run(
        [str(BIN / "fedrisk"), "data", "synth", "--out", str(data_dir)], env=base, check=True, capture_output=True
    )
    suffix = uuid.uuid4().hex[:8]
    prefect_db = create_database(args.postgres, f"prefect_bench_{suffix}")
    mlflow_db = create_database(args.postgres, f"mlflow_bench_{suffix}")
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_server = start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
        {
            **base,
            "PREFECT_HOME": str(work / "prefect-server"),
            "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db.replace("postgresql://", "postgresql+asyncpg://"),
        },
        work / "prefect-server.log",
    )
    mlflow_server = start(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            mlflow_db,
            "--serve-artifacts",
            "--artifacts-destination",
            str(work / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
            "--workers",
            "1",
        ],
        base,
        work / "mlflow-server.log",
    )
    try:
        wait_healthy(f"http://127.0.0.1:{prefect_port}/api/health", prefect_server, "prefect server")
        wait_healthy(f"http://127.0.0.1:{mlflow_port}/health", mlflow_server, "mlflow server")
        setups = {
            "embedded (temporary Prefect API, sqlite, file lock)": {
                **base,
                "PREFECT_HOME": str(work / "embedded" / "prefect"),
                "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'embedded' / 'mlruns' / 'mlflow.db'}",
                "FEDRISK_RUNS_DIR": str(work / "embedded" / "runs"),
                "FEDRISK_LOG_FILE": str(work / "embedded.log"),
            },
            "production (Prefect server + MLflow tracking server on PostgreSQL, database lock)": {
                **base,
                "PREFECT_HOME": str(work / "production" / "prefect"),
                "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                "FEDRISK_LOCK_DATABASE_URL": args.postgres,
                "FEDRISK_RUNS_DIR": str(work / "production" / "runs"),
                "FEDRISK_LOG_FILE": str(work / "production.log"),
            },
        }
        for env in setups.values():
            Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
        seconds: dict[str, list[float]] = {name: [] for name in setups}
        for run in range(1, args.runs + 1):
            for number, (name, env) in enumerate(setups.items()):
                took = timed_demo(env, data_dir, work / f"demo-{number}-run-{run}.log")
                seconds[name].append(took)
                print(f"run {run}  {name:<85} {took:7.1f} s", flush=True)
    finally:
        stop(prefect_server)
        stop(mlflow_server)
    results = [{"setup": name, "seconds": values} for name, values in seconds.items()]
    embedded, production = (values for values in seconds.values())
    for run in range(args.runs):
        print(
            f"run {run + 1}: production {production[run]:.1f} s vs embedded {embedded[run]:.1f} s "
            f"({production[run] / embedded[run] - 1:+.1%})"
        )
    print(f"written: {write_json(args.json, 'production_stores', args, results)} (logs in {work})")


if __name__ == "__main__":
    main()
