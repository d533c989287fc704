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
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger
from prefect.runtime import flow_run

from errors import FedriskError, first_line
from flows.settings import Settings
from hostguard.credentials import masked


class RetrainingBusy(FedriskError, RuntimeError):
    """Another retraining of the same model is running; this one gave up waiting for it."""


class LockUnavailable(FedriskError, RuntimeError):
    """The lock database cannot be reached: nothing is trained rather than trained unguarded."""


class LockLost(FedriskError, RuntimeError):
    """The lock was lost while held (its database connection dropped, its file replaced): the run stops before
    anything more is registered, since another retraining may hold it now. Never retried."""

    retryable = False


def _utc_now() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"


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
        self.handle.write(f"{holder}, since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        self.handle.flush()
        return True

    def holder(self) -> str:
        self.handle.seek(0)
        return self.handle.read().strip() or "unknown"

    def lost(self) -> str | None:
        """Why the lock is no longer ours (its file removed or replaced: a new file takes a new lock), or None."""
        try:
            if os.stat(self.path).st_ino == os.fstat(self.handle.fileno()).st_ino:
                return None
        except FileNotFoundError:
            pass
        return f"its file {self.path} was removed or replaced while held"

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
        self.url, self.application_name = url, f"fedrisk {flow_run_id} {os.getpid()}"[:63]
        self.connection = self._connect()
        # The lock's 64-bit key: a hash of the model's name, computed by the server.
        self.key = int(self._one("SELECT hashtextextended(%s, 0)", f"fedrisk retraining {model_name}")[0])
        self.session: tuple | None = None  # (backend pid, server start) of the session that took the lock

    def _connect(self):
        import psycopg

        try:
            # The server's side of the keepalives (session settings) ends the session, and with it the lock,
            # about a minute after the holder's host is gone without closing the connection.
            return psycopg.connect(
                self.url,
                autocommit=True,
                application_name=self.application_name,
                connect_timeout=10,
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
                options="-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3",
            )
        except psycopg.Error as error:
            raise LockUnavailable(
                f"the retraining lock's database {masked(self.url)} (FEDRISK_LOCK_DATABASE_URL) "
                f"cannot be reached: {first_line(error)}; nothing was trained or registered"
            ) from None

    def reconnect(self) -> None:
        """A new session after the old one dropped (while waiting: nothing was held on it)."""
        self.connection.close()  # a broken connection closes without raising
        self.connection = self._connect()

    def _one(self, query: str, *parameters):
        with self.connection.cursor() as cursor:
            cursor.execute(query, parameters)
            return cursor.fetchone()

    def try_acquire(self, holder: str) -> bool:
        acquired, pid, started = self._one(
            "SELECT pg_try_advisory_lock(%s), pg_backend_pid(), pg_postmaster_start_time()", self.key
        )
        if acquired:
            self.session = (pid, started)
        return bool(acquired)

    def lost(self) -> str | None:
        """Why the lock is no longer ours, or None: asked on the session that took it, which must be the same
        session (backend pid) of the same server generation (start time) and still hold the advisory lock."""
        import psycopg

        try:
            pid, started, held = self._one(
                """
                SELECT pg_backend_pid(), pg_postmaster_start_time(), EXISTS(
                    SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
                      AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s)""",
                (self.key >> 32) & 0xFFFFFFFF,
                self.key & 0xFFFFFFFF,
            )
        except psycopg.Error as error:
            return f"its database connection dropped: {first_line(error)}"
        if (pid, started) != self.session:
            return "its database session was replaced (the server restarted)"
        return None if held else "its database session no longer holds it"

    def holder(self) -> str:
        # A bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1.
        row = self._one(
            """
            SELECT a.application_name, host(a.client_addr), a.backend_start
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
              AND l.classid::bigint = %s AND l.objid::bigint = %s""",
            (self.key >> 32) & 0xFFFFFFFF,
            self.key & 0xFFFFFFFF,
        )
        if row is None:
            return "released meanwhile"
        name, host, since = row
        _, run, pid = (name.split(" ") + ["?", "?"])[:3]
        return (
            f"flow run {run}, pid {pid} on {host or 'the database host'}, "
            f"since {since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
        )

    def release(self) -> None:
        self._one("SELECT pg_advisory_unlock(%s)", self.key)

    def close(self) -> None:
        self.connection.close()


class LockHold:
    """The held lock, as the retraining sees it: `verify` before every registry write and at each round."""

    def __init__(self, model_name: str, lock: _FileLock | _DatabaseLock) -> None:
        self.model_name, self.lock, self.confirmed = model_name, lock, _utc_now()

    def verify(self, where: str) -> None:
        """Raise LockLost when the lock is no longer this run's (`where`: the point of the run that asks)."""
        why = self.lock.lost()
        if why is None:
            self.confirmed = _utc_now()
            return
        raise LockLost(
            f"the retraining lock on {self.model_name} was lost at {_utc_now()} ({why}; last confirmed "
            f"{self.confirmed}); noticed {where}, the run stopped and nothing was registered. "
            f"Another retraining may hold the lock now: retry when none is running."
        )


def _acquire(
    lock: _FileLock | _DatabaseLock, model_name: str, holder: str, wait_seconds: float, poll_seconds: float, logger
) -> None:
    """Take the lock, waiting up to `wait_seconds` (RetrainingBusy after that). A lock database that drops the
    connection while this run waits is reconnected to, and the wait goes on (LockUnavailable if it stays away)."""
    import psycopg

    deadline, warned = time.monotonic() + wait_seconds, False
    while True:
        try:
            if lock.try_acquire(holder):
                return
            holding = lock.holder()
        except psycopg.Error as error:
            logger.warning(
                "the retraining lock's database dropped this run's connection while it waited (%s); "
                "reconnecting and waiting on",
                first_line(error),
            )
            while True:
                try:
                    lock.reconnect()
                    break
                except LockUnavailable as unavailable:
                    if time.monotonic() >= deadline:
                        raise LockUnavailable(
                            f"{unavailable} (it dropped the connection while this run waited for "
                            f"the lock and was not back after {wait_seconds:g} s)"
                        ) from None
                    time.sleep(poll_seconds)
            continue
        if time.monotonic() >= deadline:
            raise RetrainingBusy(
                f"another retraining of {model_name} is still running after waiting {wait_seconds:g} s "
                f"({holding}); nothing was trained or registered. Retry when it has finished."
            )
        if not warned:
            logger.warning(
                "another retraining of %s is running (%s); waiting up to %g s for it", model_name, holding, wait_seconds
            )
            warned = True
        time.sleep(poll_seconds)


@contextmanager
def model_lock(model_name: str, wait_seconds: float, poll_seconds: float = 1.0) -> Iterator[LockHold]:
    """Hold the model's lock for the whole retraining. A second retraining logs who holds it, waits up to
    `wait_seconds`, then raises RetrainingBusy. The holder verifies it still holds it (LockHold.verify); an
    error while releasing is logged, never raised over the run's own outcome."""
    logger = get_run_logger()
    settings = Settings()
    if settings.lock_database_url:
        lock: _FileLock | _DatabaseLock = _DatabaseLock(settings.lock_database_url, model_name, str(flow_run.id))
    else:
        if settings.mlflow_tracking_uri.startswith(("http://", "https://")):
            logger.warning(
                "the retraining lock of %s covers this machine only (a file lock); with a shared "
                "tracking server set FEDRISK_LOCK_DATABASE_URL so that it holds across hosts",
                model_name,
            )
        lock = _FileLock(settings.runs_dir / "locks" / f"{model_name}.lock")  # beside the runs' checkpoints
    try:
        holder = f"flow run {flow_run.id} ({flow_run.name}), pid {os.getpid()} on {socket.gethostname()}"
        _acquire(lock, model_name, holder, wait_seconds, poll_seconds, logger)
        try:
            yield LockHold(model_name, lock)
        finally:
            try:
                lock.release()
            except Exception as error:  # a dropped connection released it already; the run's outcome stands
                logger.warning(
                    "releasing the retraining lock of %s failed (%s); a lost connection's locks are "
                    "released by the database server",
                    model_name,
                    first_line(error),
                )
    finally:
        lock.close()  # closing a broken connection does not raise
