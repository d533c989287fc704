"""The `fedrisk` command line: one module per sub-app or group of commands, assembled here into one command tree.

The command table below is the whole CLI; each command's code is in the module it names.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

import typer
from typer.core import TyperGroup

import flows  # noqa: F401  (sets library defaults before they are imported)
from flows.cli import common, data, deployments, ledger, lineage, models, monitor, node, pki, runs, schema, score


def _plain_placeholders(command) -> None:
    """Conventional help placeholders for `command` and everything under it: `--config PATH`, `DEPLOYMENT`,
    flags without one, instead of typer's type names (`<path>`, `{deployment}`, `<bool>`)."""
    for param in [*command.params, command.get_help_option(typer.Context(command))]:
        if param is not None and param.metavar is None:
            param.metavar = "" if getattr(param, "is_flag", False) else param.name.upper()
        if param is not None and param.param_type_name == "argument":
            # typer 0.29 writes a required argument as {NAME} in the usage line and adds its type (<str>);
            # tests/e2e/test_cli.py checks the help text, so a typer upgrade that changes these hooks shows.
            param._usage_display_name = lambda name=param.metavar: name
            param.display_type_rich = lambda ctx: None
    for sub in getattr(command, "commands", {}).values():
        _plain_placeholders(sub)


class PlainHelpGroup(TyperGroup):
    """The `fedrisk` command tree, with help that reads like the tools its users know."""

    def __init__(self, **attrs) -> None:
        super().__init__(**attrs)
        _plain_placeholders(self)


app = typer.Typer(
    help="Federated credit-risk retraining: validate, train, evaluate, register.",
    no_args_is_help=True,
    add_completion=False,
    cls=PlainHelpGroup,
)


@app.callback()
def main(
    context: typer.Context,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also show what the libraries log (TensorFlow, MLflow, Prefect's bookkeeping)."
    ),
) -> None:
    """Federated credit-risk retraining: validate, train, evaluate, register."""
    from flows.terminal import set_up

    read = common.read_settings()  # once per command, here; every command takes them from common.settings()
    context.call_on_close(common.forget_settings)  # the next command (in this process: tests) reads them anew
    set_up(verbose, read.log_file)


app.command()(runs.demo)
app.command("retrain")(runs.retrain_command)
app.command()(runs.validate)
app.command()(ledger.ledger)
app.command()(lineage.lineage)
app.command()(score.score)
app.command()(monitor.monitor)
app.command()(deployments.serve)
app.command()(deployments.deploy)
app.command()(deployments.trigger)
app.add_typer(data.app, name="data")
app.add_typer(models.app, name="models")
app.add_typer(schema.app, name="schema")
app.add_typer(node.app, name="node")
app.add_typer(pki.app, name="pki")


def run() -> None:
    """The `fedrisk` command: the app, then its exit. Once TensorFlow is loaded, Python's own teardown of it takes
    5-10 s after the last line on 2 cores (C++ state freed module by module), with nothing left to do; so the exit
    does what Python would before that teardown (waits for the threads, runs the exit handlers: workers stopped
    by pid, logs flushed) and ends the process there."""
    try:
        app()
        code = 0
    except SystemExit as ended:
        if isinstance(ended.code, str):
            print(ended.code, file=sys.stderr)
        code = ended.code if isinstance(ended.code, int) else 0 if ended.code is None else 1
    if "tensorflow" not in sys.modules:
        sys.exit(code)
    # What Python's exit does first, in its order: threading's own exit callbacks (a thread pool's idle workers,
    # MLflow's artifact uploads, are told to stop) and then the join of every non-daemon thread; joining first
    # waited for ever on an idle pool worker.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
