"""`fedrisk score`: an institution's rows scored with a registered model, where the rows are."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from errors import ExitCode
from flows.cli.common import print_error, settings
from flows.cli.lineage import model_reference
from flows.terminal import console


def score(
    model: str = typer.Option(
        ..., "--model", metavar="NAME@ALIAS", help="NAME@ALIAS (e.g. credit_default@champion) or NAME/VERSION."
    ),
    input: Path = typer.Option(
        ..., "--input", metavar="FILE", help="Raw rows to score (CSV or Parquet, the schema's columns)."
    ),
    output: Path = typer.Option(
        ...,
        "--output",
        metavar="FILE",
        help="Where to write the ID, the schema's probability column and the score band (CSV).",
    ),
    reasons: int = typer.Option(
        0,
        "--reasons",
        min=0,
        max=20,
        metavar="N",
        help="A scorecard's score points and this many reason codes per row.",
    ),
) -> None:
    """Score each row with the registered model; a row that fails a check of the model's suite is written unscored,
    with the checks it failed in the column not_scored_because."""
    from contract.data import InstitutionDataError
    from contract.suites import SuiteOutOfDate
    from institution.scoring import REJECTED_COLUMN, SCORE_BANDS, ScoringInputRejected, score_file

    name, alias, version = model_reference(model)
    read = settings()
    try:
        with console.status(f"Scoring {escape(str(input))}") as status:
            result = score_file(
                read.mlflow_tracking_uri,
                name,
                alias,
                version,
                input,
                output,
                read.expectations_dir,
                reasons=reasons,
                progress=lambda rows: status.update(f"Scoring {escape(str(input))}: {rows:,} rows"),
            )
    except ScoringInputRejected as error:
        console.print(f"[red]{escape(str(input))}: rejected, nothing was scored.[/red] Failed checks:")
        for reason in error.reasons:
            console.print(f"  - {escape(reason)}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None
    except (InstitutionDataError, LookupError, SuiteOutOfDate) as error:  # the scorer's own file: values shown
        print_error(getattr(error, "detail", None) or error)
        raise typer.Exit(ExitCode.FAILED) from None
    except OSError as error:  # the output's folder not writable, the disk full: nothing was written
        print_error(f"{output}: cannot be written ({error.strerror or error}); nothing was written")
        raise typer.Exit(ExitCode.FAILED) from None
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    console.print(
        f"Scored {result.scored} of {result.rows} rows with {result.model_name} version {result.version} "
        f"-> {result.output}",
        highlight=False,
    )
    if result.rejected:
        console.print(
            f"[yellow]{result.rows - result.scored} rows not scored[/yellow] (their reasons are in column "
            f"{REJECTED_COLUMN}):",
            highlight=False,
        )
        for check, rows in result.rejected.items():
            console.print(f"  - {escape(check)}: {rows} rows", highlight=False)
    bands = ", ".join(f"{band} (<= {upper:g}): {result.bands[band]}" for band, upper in SCORE_BANDS)
    console.print(f"Score bands: {bands}")
    if not result.scored:
        raise typer.Exit(ExitCode.FAILED)
