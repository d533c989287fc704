"""What fedrisk's errors have in common: one root class, the exit code each kind of failure gives a command, and
an error in one line for a status line."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """A command's exit status: the one table every `fedrisk` command answers with."""

    OK = 0
    FAILED = 1  # it ran and failed or said no: a quorum not met, a budget spent, no row scored, a node refused
    USAGE = 2  # a bad argument, config, schema, file or certificate: nothing was started
    CRASHED = 3  # `fedrisk trigger`: the deployment's run crashed (its process died)
    CANCELLED = 4  # `fedrisk trigger`: the deployment's run was cancelled
    STILL_RUNNING = 5  # `fedrisk trigger --timeout`: the run had not finished when the wait ended
    BREACHED = 6  # `fedrisk monitor`: a monitoring threshold calls for retraining (the report says which)


class FedriskError(Exception):
    """An expected failure, said to the user in one line (never a traceback); `exit_code` is what a command exits
    with when it ends on it."""

    exit_code: ExitCode = ExitCode.FAILED


def first_line(error: BaseException) -> str:
    """An error in one line, for a status line or a warning: its message's first line, else its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
