"""The Prefect API a command talks to: the configured server, or a temporary one this process owns.

Prefect's own temporary API is a uvicorn child that only an exit handler stops, so a command killed
with SIGKILL left it running. This one is started the same way (loopback, UI off, the local
database in PREFECT_HOME) but as an owned child: the kernel stops it when the command ends.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from errors import FedriskError
from hostguard.processes import spawn_owned, stop

_START_BUDGET_S = 300.0  # a busy 2-core machine took 30-76 s, and more than 120 s in 3 of 17 commands
_PROGRESS_EVERY_S = 15.0
_temporary_url: str | None = None
_early: list = []  # a temporary API started ahead of its first use (starting_early), not yet adopted


class PrefectApiUnavailable(FedriskError, RuntimeError):
    """The temporary Prefect API did not start; nothing was run."""


def _last_error(log: Path) -> str:
    """The last error line of the API's log (the cause, under uvicorn's "startup failed")."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if "Error" in line]
    return lines[-1] if lines else "no error logged"


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_temporary(api_url: str | None) -> bool:
    """Whether `api_url` is the temporary API of this command (gone when it ends: no link to give)."""
    return api_url is not None and api_url == _temporary_url


def _spawn(log_dir: Path | None):
    """Start the temporary API's process (loopback, UI off, the local database in PREFECT_HOME); its process,
    URL and log. Blocks are not registered: fedrisk's flows use none, and it saves a second on a new database."""
    import prefect
    from prefect.settings import get_current_settings

    port = _free_loopback_port()
    url = f"http://127.0.0.1:{port}/api"
    log = Path(log_dir or tempfile.gettempdir()) / f"prefect-api-{os.getpid()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT_API_BLOCKS_REGISTER_ON_START": "0",
    }
    process = spawn_owned(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(prefect.__module_path__.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "info",
            "--no-access-log",
            "--lifespan",
            "on",
        ],
        log,
        env=env,
    )
    return process, url, log


def started_early() -> bool:
    """Whether a temporary API was started ahead of its first use and waits to be adopted."""
    return bool(_early)


@contextmanager
def starting_early(log_dir: Path | None = None) -> Iterator[None]:
    """Start the temporary API now, when the command will need one (no PREFECT_API_URL), so that its start-up
    (Prefect's server imports, the database's migrations) overlaps the command's own; `prefect_api` adopts it.
    One not adopted when the block ends (the command stopped earlier) is stopped."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    if PREFECT_API_URL.value() or _early:
        yield
        return
    try:
        Path(PREFECT_HOME.value()).expanduser().mkdir(parents=True, exist_ok=True)
        _early.append(_spawn(log_dir))
    except OSError:  # reported by prefect_api, where it is needed
        pass
    try:
        yield
    finally:
        while _early:
            process, _, log = _early.pop()
            stop(process)
            log.unlink(missing_ok=True)


@contextmanager
def prefect_api(
    start_budget: float = _START_BUDGET_S, log_dir: Path | None = None, progress: Callable[[str], None] | None = None
) -> Iterator[str]:
    """Yield the API URL: PREFECT_API_URL when set, else a temporary API on a loopback port, owned by
    this process and stopped (by pid) when the block ends or the process dies. It may take `start_budget`
    seconds to answer; `progress` hears how long it has waited every 15 s; its own log (start-up included) is
    `log_dir`/prefect-api-PID.log (default: the temp dir), kept when it fails to start, removed after a run."""
    global _temporary_url
    import httpx
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_UI_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    try:
        Path(PREFECT_HOME.value()).expanduser().mkdir(parents=True, exist_ok=True)  # where its database goes
    except OSError as error:
        raise PrefectApiUnavailable(f"PREFECT_HOME {PREFECT_HOME.value()} cannot be created: {error}") from None
    process, url, log = _early.pop() if _early else _spawn(log_dir)
    try:
        started = time.monotonic()
        deadline, said = started + start_budget, started
        with httpx.Client() as client:
            while True:
                if process.poll() is not None:
                    raise PrefectApiUnavailable(
                        f"the temporary Prefect API exited with code {process.returncode} "
                        f"on start: {_last_error(log)} (see {log})"
                    )
                try:
                    if client.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                now = time.monotonic()
                if now > deadline:
                    raise PrefectApiUnavailable(
                        f"the temporary Prefect API did not answer in {start_budget:g} s "
                        f"(FEDRISK_PREFECT_START_SECONDS; its log: {log})"
                    )
                if progress is not None and now - said >= _PROGRESS_EVERY_S:
                    said = now
                    progress(
                        f"still starting the temporary Prefect API ({now - started:.0f} s of up to "
                        f"{start_budget:g} s; its log: {log})"
                    )
                time.sleep(0.1)
        _temporary_url = url
        # No UI links: the UI is off and the server is gone when the command ends.
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_UI_URL: ""}):
            try:
                yield url
            finally:
                _drain()
        log.unlink(missing_ok=True)  # it started and served the command: nothing to explain
    finally:
        _temporary_url = None
        stop(process)


def _drain(timeout: float = 10.0) -> None:
    """Send the logs and events still queued to the API before it stops (else Prefect retries for a minute)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)
