"""One retraining per model at a time: a lock held from validation to registration, so that two runs
(scheduled, triggered or local) never race the model's registry entry.

On one machine it is an OS file lock beside the runs' checkpoints. When the registry is shared by several
hosts (FEDRISK_LOCK_DATABASE_URL, or an MLflow store that is itself PostgreSQL) it is a PostgreSQL advisory
lock held by a connection of this process. Either way whoever holds it is released the moment it dies:
the kernel drops a dead process's file locks, the database server a dead connection's locks.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from prefect import get_run_logger
from prefect.runtime import flow_run

from flows.settings import Settings
from hostguard.credentials import masked


class RetrainingBusy(RuntimeError):
    """Another retraining of the same model is running; this one gave up waiting for it."""


class LockUnavailable(RuntimeError):
    """The lock database cannot be reached: nothing is trained rather than trained unguarded."""


class _FileLock:
    """An flock(2) on the model's lock file; the file says who holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")

    def try_acquire(self, holder: str) -> bool:
        import fcntl

        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{holder}, since {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
        self.handle.flush()
        return True

    def holder(self) -> str:
        self.handle.seek(0)
        return self.handle.read().strip() or "unknown"

    def release(self) -> None:
        import fcntl

        self.handle.seek(0)
        self.handle.truncate()
        fcntl.flock(self.handle, fcntl.LOCK_UN)

    def close(self) -> None:
        self.handle.close()


class _DatabaseLock:
    """A session-level PostgreSQL advisory lock on a key derived from the model's name, held by a connection
    of this process whose application_name names the holder (read back from pg_stat_activity)."""

    def __init__(self, url: str, model_name: str, flow_run_id: str) -> None:
        import psycopg

        try:
            # The server's side of the keepalives (session settings) ends the session, and with it the lock,
            # about a minute after the holder's host is gone without closing the connection.
            self.connection = psycopg.connect(
                url, autocommit=True, application_name=f"fedrisk {flow_run_id} {os.getpid()}"[:63],
                connect_timeout=10, keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                options="-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3")
        except psycopg.Error as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise LockUnavailable(f"the retraining lock's database {masked(url)} (FEDRISK_LOCK_DATABASE_URL) "
                                  f"cannot be reached: {first}; nothing was trained or registered") from None

        # The lock's 64-bit key: a hash of the model's name, computed by the server.
        self.key = int(self._one("SELECT hashtextextended(%s, 0)", f"fedrisk retraining {model_name}")[0])

    def _one(self, query: str, *parameters):
        with self.connection.cursor() as cursor:
            cursor.execute(query, parameters)
            return cursor.fetchone()

    def try_acquire(self, holder: str) -> bool:
        return bool(self._one("SELECT pg_try_advisory_lock(%s)", self.key)[0])

    def holder(self) -> str:
        # A bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1.
        row = self._one("""
            SELECT a.application_name, host(a.client_addr), a.backend_start
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
              AND l.classid::bigint = %s AND l.objid::bigint = %s""",
                        (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF)
        if row is None:
            return "released meanwhile"
        name, host, since = row
        _, run, pid = (name.split(" ") + ["?", "?"])[:3]
        return (f"flow run {run}, pid {pid} on {host or 'the database host'}, "
                f"since {since.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC")

    def release(self) -> None:
        self._one("SELECT pg_advisory_unlock(%s)", self.key)

    def close(self) -> None:
        self.connection.close()


@contextmanager
def model_lock(model_name: str, wait_seconds: float, poll_seconds: float = 1.0) -> Iterator[None]:
    """Hold the model's lock for the whole retraining. A second retraining logs who holds it, waits up to
    `wait_seconds`, then raises RetrainingBusy."""
    logger = get_run_logger()
    settings = Settings()
    if settings.lock_database_url:
        lock = _DatabaseLock(settings.lock_database_url, model_name, str(flow_run.id))
    else:
        if settings.mlflow_tracking_uri.startswith(("http://", "https://")):
            logger.warning("the retraining lock of %s covers this machine only (a file lock); with a shared "
                           "tracking server set FEDRISK_LOCK_DATABASE_URL so that it holds across hosts", model_name)
        lock = _FileLock(settings.runs_dir / "locks" / f"{model_name}.lock")  # beside the runs' checkpoints
    try:
        holder = f"flow run {flow_run.id} ({flow_run.name}), pid {os.getpid()} on {socket.gethostname()}"
        deadline, warned = time.monotonic() + wait_seconds, False
        while not lock.try_acquire(holder):
            if time.monotonic() >= deadline:
                raise RetrainingBusy(
                    f"another retraining of {model_name} is still running after waiting {wait_seconds:g} s "
                    f"({lock.holder()}); nothing was trained or registered. Retry when it has finished.")
            if not warned:
                logger.warning("another retraining of %s is running (%s); waiting up to %g s for it",
                               model_name, lock.holder(), wait_seconds)
                warned = True
            time.sleep(poll_seconds)
        try:
            yield
        finally:
            lock.release()
    finally:
        lock.close()
