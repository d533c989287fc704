"""One retraining per model at a time, across hosts: the PostgreSQL advisory lock held by separate processes.

(The file lock of one machine is tested with the retraining itself, in tests/test_retrain.py.)
"""

from __future__ import annotations

import os
import re
import signal
import queue
import subprocess
import sys
import threading
import time

import pytest

from hostguard.credentials import masked
from tests.test_production_stores import POSTGRES, _UNREACHABLE

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


class Holder:
    """A lock-holding process (HOLDER) and its output, read by one thread as it comes."""

    def __init__(self, prefect_api: str, hold: float, wait: float) -> None:
        env = {**os.environ, "PREFECT_API_URL": prefect_api, "FEDRISK_LOCK_DATABASE_URL": POSTGRES}
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, str(hold), str(wait)], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, text: str, timeout: float) -> str:
        """Wait for a line with `text` (failing with the output if the process ends or time runs out)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} in {timeout:g} s:\n{''.join(self.seen)[-3000:]}") from None
            if line is None:
                raise AssertionError(f"ended ({self.process.wait()}) before {text!r}:\n{''.join(self.seen)[-3000:]}")
            self.seen.append(line)
            if text in line:
                return line

    def end(self) -> int:
        """Wait for the process to end; its exit code (all its output is in `seen` then)."""
        code = self.process.wait(timeout=120)
        while (line := self.lines.get(timeout=30)) is not None:
            self.seen.append(line)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.mark.skipif(_UNREACHABLE is not None, reason=f"no PostgreSQL server at {POSTGRES} ({_UNREACHABLE}); set "
                                                       f"FEDRISK_TEST_POSTGRES_URL (`.ci/run` starts one)")
def test_the_database_lock_makes_others_wait_names_its_holder_and_dies_with_it(prefect_api):
    holder = Holder(prefect_api, hold=600, wait=0)
    others: list[Holder] = []
    try:
        holder.until("acquired the lock", timeout=120)
        refused = Holder(prefect_api, hold=0, wait=1)
        others.append(refused)
        assert refused.end() == 1
        output = "".join(refused.seen)
        assert re.search(r"RetrainingBusy: another retraining of m is still running after waiting 1 s \(flow run "
                         rf"[0-9a-f-]{{36}}, pid {holder.process.pid} on 127\.0\.0\.1, since \d{{4}}-\d\d-\d\d "
                         r"\d\d:\d\d:\d\d UTC\); nothing was trained or registered", output), output

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
    assert str(error.value).startswith("the retraining lock's database postgresql://fedrisk:***@127.0.0.1:1/registry "
                                       "(FEDRISK_LOCK_DATABASE_URL) cannot be reached: ")
    assert str(error.value).endswith("; nothing was trained or registered") and "secret" not in str(error.value)


def test_a_password_is_never_printed():
    assert masked("postgresql://u:pw@db.bank:5432/x") == "postgresql://u:***@db.bank:5432/x"
    assert masked("postgresql://u@db/x") == "postgresql://u@db/x"
