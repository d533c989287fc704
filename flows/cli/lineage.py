"""`fedrisk lineage`: a model version traced to its run, flow run, code, config, suite and data."""

from __future__ import annotations

import typer

from errors import ExitCode
from flows.cli.common import print_error, settings
from flows.settings import PROJECT_ROOT
from flows.terminal import console


def model_reference(reference: str) -> tuple[str, str | None, str | None]:
    """NAME@ALIAS or NAME/VERSION parsed; anything else is one red line, exit 2."""
    from tracking.lineage import parse_reference

    try:
        return parse_reference(reference)
    except ValueError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None


def lineage(
    reference: str = typer.Argument(
        ..., metavar="NAME@ALIAS|NAME/VERSION", help="NAME@ALIAS (e.g. credit_default@champion) or NAME/VERSION."
    ),
) -> None:
    """Trace a model version to its MLflow run, Prefect flow run, code, config, suite and data; check each link."""
    from tracking.lineage import trace

    model_reference(reference)
    read = settings()
    try:
        headline, links = trace(
            read.mlflow_tracking_uri, reference, PROJECT_ROOT, read.expectations_dir, read.mlflow_ui_url
        )
    except LookupError as error:
        print_error(error)
        raise typer.Exit(ExitCode.FAILED) from None
    console.print(f"[bold]{reference}[/bold] -> {headline}")
    for link in links:
        mark = "[green]ok[/green]" if link.resolved else "[red]UNRESOLVED[/red]"
        console.print(
            f"  {mark:>8}  {link.what}: {link.reference}" + (f"  ({link.detail})" if link.detail else ""),
            soft_wrap=True,
            highlight=False,
        )
    if not all(link.resolved for link in links):
        raise typer.Exit(ExitCode.FAILED)
