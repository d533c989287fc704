"""Retry policy for tasks that talk to services: transient failures are retried with backoff, nothing else.

Transient means the same call may succeed a few seconds later: a sqlite database locked by
another writer, a refused or dropped connection (also one dropped mid-answer), a timeout, a 5xx or 429 from an
HTTP API. A
bad extract, a failed validation or a bad config is never retried: it fails the run at once.
"""

from __future__ import annotations

import sqlite3

TRANSIENT_MESSAGES = (
    "database is locked",
    "database table is locked",
    "connection refused",
    "max retries exceeded",
    "temporarily unavailable",
    "connection reset",
    "remote end closed connection",
    "connection broken",  # a server gone mid-answer (requests' IncompleteRead, as MLflow reports it)
)
RETRY_DELAYS_SECONDS = [2, 5, 10]


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a failure worth retrying as it is."""
    import httpx

    if getattr(error, "retryable", True) is False:  # it says so itself (a lost retraining lock)
        return False
    for cause in _chain(error):
        if isinstance(cause, (httpx.TransportError, ConnectionError, TimeoutError)):
            return True
        if isinstance(cause, httpx.HTTPStatusError):
            return cause.response.status_code >= 500 or cause.response.status_code == 429
        if isinstance(cause, sqlite3.OperationalError) and "locked" in str(cause):
            return True
        if any(message in str(cause).lower() for message in TRANSIENT_MESSAGES):
            return True
    return False


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task run only when its exception is transient."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)


def service_retries(total_seconds: float) -> dict:
    """Prefect retry options for a task that talks to a service, backing off from 2 s (doubling, at most 60 s
    apart) until the delays cover `total_seconds`: a server restart (about 90 s for MLflow on a busy host) is
    ridden out, a bad request is not retried at all."""
    delays: list[float] = []
    while sum(delays) < total_seconds:
        delays.append(min(2.0 * 2 ** len(delays), 60.0))
    return dict(
        retries=len(delays),
        retry_delay_seconds=delays or [0],
        retry_jitter_factor=0.2,
        retry_condition_fn=retry_if_transient,
    )


TRANSIENT_RETRIES = dict(
    retries=len(RETRY_DELAYS_SECONDS),
    retry_delay_seconds=RETRY_DELAYS_SECONDS,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
)
