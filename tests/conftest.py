"""Shared fixtures: one Prefect API and one TFF runtime per test session, a fresh MLflow store per test."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_SCRATCH = tempfile.mkdtemp(prefix="fedrisk-test-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["PREFECT_HOME"] = str(Path(_SCRATCH) / "prefect")
os.environ.pop("PREFECT_API_URL", None)
os.environ["FEDRISK_RUNS_DIR"] = str(Path(_SCRATCH) / "runs")
# GX writes every validation result into its context: give the tests a copy of the committed one.
os.environ["FEDRISK_EXPECTATIONS_DIR"] = str(shutil.copytree(
    Path(__file__).resolve().parents[1] / "expectations", Path(_SCRATCH) / "expectations",
    ignore=shutil.ignore_patterns("uncommitted", "__pycache__")))

import flows  # noqa: E402,F401  (library defaults, before prefect/mlflow/GX are imported)
from tasks.synthetic import synthesize  # noqa: E402

TEST_EXPECTATIONS_DIR = Path(os.environ["FEDRISK_EXPECTATIONS_DIR"])
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
UCI_DIR = SHARED_DATA / "uci_default_credit"


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real (temporary) Prefect API for the session's flow runs; its URL, for `fedrisk` commands run
    as their own processes (which then skip starting a temporary API of their own)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session", autouse=True)
def _stop_tff_worker():
    """Stop the TFF worker by its pid when the session ends (if TFF was used)."""
    yield
    import sys

    if "fed_models.runtime" in sys.modules:
        sys.modules["fed_models.runtime"].stop_worker()


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def small_consortium(tmp_path_factory) -> dict[str, Path]:
    """Four synthetic institutions at a quarter of the demo's size (5000/2000/1000/500 rows)."""
    return synthesize(tmp_path_factory.mktemp("consortium"), n_institutions=4, seed=3, rows_scale=0.25)


def require_uci() -> Path:
    if not UCI_DIR.is_dir():
        pytest.skip(f"real UCI credit data not found at {UCI_DIR} (../shared/data is absent)")
    return UCI_DIR


@pytest.fixture(scope="session")
def registered(prefect_api, small_consortium, tmp_path_factory):
    """One model retrained twice on the small consortium with simulation baselines, in its own
    MLflow store: version 1 is champion, version 2 (same data and settings) its challenger.

    Tests that read it point MLFLOW_TRACKING_URI at `registered.tracking_uri`.
    """
    from types import SimpleNamespace

    from flows.config import parse_config
    from flows.retrain import retrain

    root = tmp_path_factory.mktemp("registered")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    config = parse_config({
        "model_name": "credit_registered",
        "institutions": [{"name": n, "path": str(p)} for n, p in small_consortium.items()],
        "training": {"rounds": 8},
        "baselines": {"enabled": True, "max_epochs": 20},
        "quorum": 3,
        "seed": 2,
    }, Path("."))
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        first, second = retrain(config), retrain(config)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return SimpleNamespace(tracking_uri=uri, artifacts=root / "mlruns" / "artifacts", config=config,
                           first=first, second=second, data=small_consortium, name=config.model_name)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A server or worker process for the length of a block, its output in `log`; stopped by its
    process id (its whole process group) however the block ends."""
    with open(log, "wb") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it after 30 s; a group already gone is fine."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def wait_for(ready: Callable[[], bool], process: subprocess.Popen, log: Path, what: str, timeout: float = 180) -> None:
    """Poll `ready` until it holds; fail with the process's last output if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"{what}: process exited ({process.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not ready in {timeout:g} s:\n{log.read_text()[-3000:]}"
        time.sleep(1)
