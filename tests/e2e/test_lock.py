"""One retraining per model at a time, across hosts: the PostgreSQL advisory lock held by separate processes.

(The file lock of one machine is tested with the retraining itself, in tests/e2e/test_retrain.py.)
"""

from __future__ import annotations

import os
import re
import sys

import pytest

from hostguard.credentials import masked
from tests.conftest import FEDRISK, POSTGRES, WatchedProcess, requires_postgres, write_config

# A process that takes the retraining lock of model `m` (waiting up to WAIT s) inside a flow run, says so,
# and holds it for HOLD s: a retraining reduced to its lock.
HOLDER = """
import sys, time
import flows
from prefect import flow
from flows.lock import model_lock

@flow(name="hold-lock")
def hold(hold: float, wait: float) -> None:
    with model_lock("m", wait, poll_seconds=0.2):
        print("acquired the lock", flush=True)
        time.sleep(hold)

hold(float(sys.argv[1]), float(sys.argv[2]))
"""


def Holder(
    prefect_api: str,
    hold: float = 0,
    wait: float = 0,
    lock_url: str = POSTGRES,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> WatchedProcess:
    """A lock-holding process (HOLDER, or the command `args`) on the lock database `lock_url`."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "FEDRISK_LOCK_DATABASE_URL": lock_url, **(env or {})}
    return WatchedProcess(args or [sys.executable, "-c", HOLDER, str(hold), str(wait)], env)


@requires_postgres()
def test_the_database_lock_makes_others_wait_names_its_holder_and_dies_with_it(prefect_api):
    holder = Holder(prefect_api, hold=600, wait=0)
    others: list[Holder] = []
    try:
        holder.until("acquired the lock", timeout=120)
        refused = Holder(prefect_api, hold=0, wait=1)
        others.append(refused)
        assert refused.end() == 1
        output = "".join(refused.seen)
        assert re.search(
            r"RetrainingBusy: another retraining of m is still running after waiting 1 s \(flow run "
            rf"[0-9a-f-]{{36}}, pid {holder.process.pid} on 127\.0\.0\.1, since \d{{4}}-\d\d-\d\d "
            r"\d\d:\d\d:\d\d UTC\); nothing was trained or registered",
            output,
        ), output

        waiter = Holder(prefect_api, hold=0, wait=300)
        others.append(waiter)
        waiter.until("another retraining of m is running (flow run", timeout=120)
        holder.kill()  # a host that dies mid-run: the server drops its connection, and the lock with it
        waiter.until("acquired the lock", timeout=60)
        assert waiter.end() == 0
    finally:
        for process in (holder, *others):
            process.kill()


def test_an_unreachable_lock_database_stops_the_run_before_anything_is_trained(prefect_api, monkeypatch):
    from prefect import flow

    from flows.lock import LockUnavailable, model_lock

    @flow
    def guarded() -> None:
        with model_lock("m", 1):
            raise AssertionError("must not run unguarded")

    monkeypatch.setenv("FEDRISK_LOCK_DATABASE_URL", "postgresql://fedrisk:secret@127.0.0.1:1/registry")
    with pytest.raises(LockUnavailable) as error:
        guarded()
    assert str(error.value).startswith(
        "the retraining lock's database postgresql://fedrisk:***@127.0.0.1:1/registry "
        "(FEDRISK_LOCK_DATABASE_URL) cannot be reached: "
    )
    assert str(error.value).endswith("; nothing was trained or registered") and "secret" not in str(error.value)


def test_a_password_is_never_printed():
    assert masked("postgresql://u:pw@db.bank:5432/x") == "postgresql://u:***@db.bank:5432/x"
    assert masked("postgresql://u@db/x") == "postgresql://u@db/x"


@pytest.mark.slow
def test_a_lock_database_restarted_mid_run_stops_the_holder_before_it_registers_and_the_waiter_waits_on(
    prefect_api, postgres_cluster, small_consortium, tmp_path
):
    """The restart drops the holder's session, and its lock with it: the waiting run reconnects and takes the
    lock; the holder notices at its next round and stops, registering nothing (two registrations would race)."""
    from mlflow import MlflowClient

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    two = {name: small_consortium[name] for name in ("cedar_savings", "dune_finance")}  # the smallest: quick
    config = write_config(tmp_path / "m.yaml", two, quorum=2, training={"rounds": 400, "early_stopping": None})
    holder = Holder(
        prefect_api,
        lock_url=postgres_cluster.url,
        args=[FEDRISK, "retrain", "--config", str(config)],
        env={
            "MLFLOW_TRACKING_URI": tracking,
            "FEDRISK_RUNS_DIR": str(tmp_path / "runs"),
            "FEDRISK_LOG_FILE": str(tmp_path / "fedrisk.log"),
            "COLUMNS": "200",
        },
    )
    waiter = None
    try:
        holder.until("round 2/400", timeout=300)
        waiter = Holder(prefect_api, hold=0, wait=300, lock_url=postgres_cluster.url)
        waiter.until("another retraining of m is running (flow run", timeout=120)
        postgres_cluster.restart()
        waiter.until("the retraining lock's database dropped this run's connection while it waited", timeout=60)
        waiter.until("acquired the lock", timeout=60)  # the holder's lock went with its session
        assert holder.end(timeout=120) == 1
        output = "".join(holder.seen)
        assert re.search(
            r"Retraining stopped: the retraining lock on m was lost at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC "
            r"\(its database connection dropped: .+; last confirmed .+\); noticed after round \d+, the run "
            r"stopped and nothing was registered",
            output,
        ), output[-3000:]
        assert "Traceback" not in output  # nor did releasing the lost lock hide the outcome
        assert MlflowClient(tracking).search_registered_models() == []
        assert waiter.end() == 0
    finally:
        for process in (holder, waiter):
            if process is not None:
                process.kill()


def test_a_lock_file_removed_while_held_is_lost(prefect_api, tmp_path, monkeypatch):
    """Another run would take a new file's lock at once: the holder must notice before it registers."""
    from prefect import flow

    from flows.lock import LockLost, model_lock

    monkeypatch.setenv("FEDRISK_RUNS_DIR", str(tmp_path))
    monkeypatch.delenv("FEDRISK_LOCK_DATABASE_URL", raising=False)

    @flow
    def guarded() -> None:
        with model_lock("m", 1) as lock:
            lock.verify("after round 1")  # held
            (tmp_path / "locks" / "m.lock").unlink()
            lock.verify("before registering")

    with pytest.raises(LockLost) as error:
        guarded()
    assert re.fullmatch(
        rf"the retraining lock on m was lost at .+ UTC \(its file {tmp_path}/locks/m.lock was removed or "
        r"replaced while held; last confirmed .+ UTC\); noticed before registering, the run stopped "
        r"and nothing was registered\. Another retraining may hold the lock now: retry when none "
        r"is running\.",
        str(error.value),
    ), str(error.value)
