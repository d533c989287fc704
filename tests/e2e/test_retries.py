"""Transient failures (a locked sqlite store, a refused connection) are retried with backoff; bad data never is."""

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect import flow

from contract.data import InstitutionDataError, read_institution
from contract.schema import load_schema
from flows.config import ConfigError
from institution.validation import QuorumNotMet
from tasks.registry import find_champion
from tasks.retries import RETRY_DELAYS_SECONDS, is_transient
from tests.conftest import free_port
from tracking.registry import use_tracking

# tracking_uri: mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI, which the fixture puts back.
pytestmark = pytest.mark.usefixtures("prefect_api", "tracking_uri")


def _caught(call):
    try:
        call()
    except Exception as error:  # noqa: BLE001  (the test inspects whatever the library raised)
        return error
    raise AssertionError("expected the call to fail")


def _hold_exclusive_lock(database: Path, seconds: float) -> threading.Thread:
    """Another writer: an exclusive transaction on the MLflow database for `seconds`."""
    ready = threading.Event()

    def hold():
        connection = sqlite3.connect(database, isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        ready.set()
        time.sleep(seconds)
        connection.execute("ROLLBACK")
        connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait()
    return thread


@contextmanager
def _answering_half(monkeypatch):
    """A loopback HTTP server whose every answer promises more bytes than it sends, then closes; its URL."""
    import socket

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries: not what is tested
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 3093\r\n\r\n{"
                )

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_what_counts_as_transient(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    use_tracking(uri, "m")
    holder = _hold_exclusive_lock(tmp_path / "mlflow.db", 6)  # a new client's first query waits 5 s
    locked = _caught(lambda: MlflowClient(uri).search_registered_models())
    holder.join()
    assert "database is locked" in str(locked) and is_transient(locked)

    port = free_port()  # a loopback port nobody listens on
    refused = _caught(lambda: MlflowClient(f"http://127.0.0.1:{port}").search_experiments())
    assert is_transient(refused), refused

    with _answering_half(monkeypatch) as half:  # a server killed while it answers: the body cut short
        broken = _caught(lambda: MlflowClient(half).search_experiments())
    assert "Connection broken" in str(broken) and is_transient(broken), broken

    (tmp_path / "bad.csv").write_text("ID;LIMIT_BAL\n1;2\n")
    bad_file = _caught(lambda: read_institution("cedar", tmp_path / "bad.csv", load_schema("credit_default")))
    assert isinstance(bad_file, InstitutionDataError) and not is_transient(bad_file)
    assert not is_transient(QuorumNotMet("1 of 3 institutions passed validation; quorum is 2"))
    assert not is_transient(ConfigError("invalid config x.yaml"))
    not_a_database = tmp_path / "notes.db"
    not_a_database.write_text("not sqlite at all " * 100)
    assert not is_transient(_caught(lambda: MlflowClient(f"sqlite:///{not_a_database}").search_experiments()))


def _task_runs(flow_run_id, name):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)),
        )


@flow
def _look_up_champion(uri: str, download_dir: Path):
    from prefect.runtime import flow_run

    return flow_run.id, find_champion(uri, "credit_locked", download_dir)


def test_a_locked_registry_is_retried_until_the_other_writer_is_done(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    use_tracking(uri, "credit_locked")
    # MLflow's own sessions wait 20 s on a locked sqlite database (busy_timeout); a writer holding
    # it longer fails the first attempt, and the task's retry gets through once it is done.
    holder = _hold_exclusive_lock(tmp_path / "mlflow.db", 24)
    started = time.monotonic()
    flow_run_id, champion = _look_up_champion(uri, tmp_path)
    holder.join()
    assert champion is None  # the lookup itself succeeded: no model registered yet
    assert time.monotonic() - started >= 24
    (run,) = _task_runs(flow_run_id, "find-champion")
    assert run.run_count >= 2 and run.state.is_completed()


def test_a_broken_registry_fails_at_once_without_retrying(tmp_path):
    not_a_database = tmp_path / "mlflow.db"
    not_a_database.write_text("not sqlite at all " * 100)
    started = time.monotonic()
    with pytest.raises(Exception, match="file is not a database"):
        _look_up_champion(f"sqlite:///{not_a_database}", tmp_path)
    assert time.monotonic() - started < RETRY_DELAYS_SECONDS[0] + 5
