"""`fedrisk models`: a registered model's versions, and promotion by hand."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from errors import ExitCode
from flows.cli.common import print_error, settings
from flows.terminal import console
from hostguard.credentials import masked

app = typer.Typer(help="Registered models: list versions, promote by hand.", no_args_is_help=True)


@app.command("list")
def list_versions(name: str = typer.Argument(..., help="Registered model name.")) -> None:
    """Versions of a model, newest first: aliases, promotion decision, weighted holdout metrics, monitoring."""
    from tracking.versions import COMPLETE, SUMMARY_METRICS
    from tracking.versions import list_versions as read_versions

    try:
        versions = read_versions(settings().mlflow_tracking_uri, name)
    except LookupError as error:
        print_error(error)
        raise typer.Exit(ExitCode.FAILED) from None
    table = Table(title=f"{name} ({masked(settings().mlflow_tracking_uri)})")
    for column in ("version", "registered", "aliases", "decision", *SUMMARY_METRICS, "epsilon", "monitoring"):
        table.add_column(
            column, justify="left" if column in ("version", "registered", "aliases", "decision") else "right"
        )
    for v in versions:
        if v.registration == COMPLETE:
            decision = v.decision + (f" (without {', '.join(v.lost)}, lost mid-training)" if v.lost else "")
            table.add_row(
                v.version,
                v.created,
                ", ".join(v.aliases),
                decision,
                *[f"{v.metrics[m]:.4f}" for m in SUMMARY_METRICS],
                v.epsilon,
                v.monitoring,
            )
    table.caption = (
        "Holdout metrics of each version when registered: ece pooled over institutions, the others "
        "example-weighted; epsilon: the most differential privacy spent on one institution; monitoring: the "
        "latest status and period (fedrisk monitor). Where a version came from: fedrisk lineage NAME/VERSION"
    )
    console.print(table)
    for v in versions:
        if v.registration != COMPLETE:
            console.print(
                f"[yellow]Version {v.version} is not listed: its registration did not finish "
                f"({v.registration}; its retraining failed while registering it). It is not scored or "
                f"promoted, and the next retraining of {name} deletes it.[/yellow]",
                highlight=False,
            )


@app.command("promote")
def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Version to make champion."),
    reason: str = typer.Option(
        ..., "--reason", metavar="TEXT", help="Why the policy is overridden (recorded on the version)."
    ),
) -> None:
    """Make VERSION the champion by hand, overriding the promotion policy; who, when and why are recorded."""
    import getpass

    from tracking.registry import promote_manually

    try:
        previous = promote_manually(settings().mlflow_tracking_uri, name, version, reason, getpass.getuser())
    except (LookupError, ValueError) as error:
        print_error(error)
        raise typer.Exit(ExitCode.FAILED) from None
    console.print(
        f"{name} version {version} is now champion (was: {previous or 'none'}); reason recorded: {escape(reason)}"
    )
