"""What every `fedrisk` command shares: this command's settings (read once), errors as one red line, the run
config, the Prefect API a command's flows go to, the validation table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.table import Table

from errors import ExitCode
from flows.config import ConfigError, load_config
from flows.settings import Settings
from flows.terminal import activity, console, status
from runconfig import RunConfig


def print_error(message: object) -> None:
    """One red line of an error, printed as written: brackets in it (a name pattern `^[a-z][a-z0-9_]{0,62}$`, a
    path) are text, not Rich markup."""
    from rich.text import Text

    console.print(Text(str(message), style="red"))


_read: Settings | None = None  # this command's settings, as the callback read them


def read_settings() -> Settings:
    """Read the settings from the environment for the command about to run (the `fedrisk` callback calls it)."""
    global _read
    _read = Settings()
    return _read


def forget_settings() -> None:
    """The next command in this process (tests) reads the settings anew."""
    global _read
    _read = None


def settings() -> Settings:
    """This command's settings, as the `fedrisk` callback read them from the environment."""
    return _read if _read is not None else Settings()


def load_run_config(path: Path) -> RunConfig:
    """The run config at `path`, validated; a bad one is one red line naming the field, exit 2."""
    try:
        return load_config(path, expectations_dir=settings().expectations_dir)
    except ConfigError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None


def prefect_api():
    """The Prefect API this command's flow runs go to, saying so when it has to start one (a few seconds)."""
    from prefect.settings import PREFECT_API_URL

    from flows.prefect_api import prefect_api as started_api
    from flows.prefect_api import started_early

    read = settings()
    if not PREFECT_API_URL.value() and not started_early():
        status("starting a temporary Prefect API (set PREFECT_API_URL to use a Prefect server)")
    return started_api(read.prefect_start_seconds, read.log_file.parent, status)


@contextmanager
def prefect_api_starting_early() -> Iterator[None]:
    """For a command that runs flows: start the temporary Prefect API (when no server is set) before anything
    else, so that its start-up overlaps the command's own imports, config and data checks."""
    from prefect.settings import PREFECT_API_URL

    from flows.prefect_api import starting_early

    activity("getting ready: the run config, the institutions' files, the Prefect API")  # a command with an end
    if not PREFECT_API_URL.value():
        status("starting a temporary Prefect API (set PREFECT_API_URL to use a Prefect server)")
    with starting_early(settings().log_file.parent):
        yield


def print_validation(reports, pages: dict[str, str]) -> None:
    """The validation outcome per institution, then where each one's checks page is (`pages`), a line each so
    that a link is never broken across lines."""
    from tasks.reporting import validation_rows

    table = Table(title="Validation")
    table.add_column("institution", no_wrap=True)
    for column in ("rows", "checks passed", "checks failed"):
        table.add_column(column, no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=len("quarantined"))  # never cut: the reasons wrap instead
    for column in ("reasons", "warnings"):
        table.add_column(column, overflow="fold")  # a long path folds onto the next line, never cut off
    for row in validation_rows(reports):
        colour = "green" if row["status"] == "admitted" else "red"
        table.add_row(
            row["institution"],
            f"{row['rows']:,}",  # as the status lines write a count: 20,000
            str(row["checks passed"]),
            str(row["checks failed"]),
            f"[{colour}]{row['status']}[/{colour}]",
            row["reasons"].replace("; ", "\n"),
            row["warnings"].replace("; ", "\n"),
        )
    drift = sorted({r.drift_checks for r in reports if r.drift_checks})
    if drift:  # why a suite of 126 checks shows 172 passed
        table.caption = (
            f"checks: the suite's, and {' or '.join(map(str, drift))} against each institution's last accepted "
            "extract (drift)"
        )
    console.print(table)
    if pages:
        console.print("Checks pages:")
    for name, page in pages.items():
        console.print(f"  {name}: {page}", soft_wrap=True, highlight=False)
