"""`fedrisk schema`: check a config's schema against every institution, draft one from extracts."""

from __future__ import annotations

from pathlib import Path

import typer

from errors import ExitCode
from flows.cli.common import print_error
from flows.cli.runs import validate_institutions
from flows.terminal import console

app = typer.Typer(help="Data contracts (schemas/NAME.yaml).", no_args_is_help=True)


@app.command("check")
def check(config: Path = typer.Option(..., "--config", "-c", metavar="PATH", help="Run config (YAML).")) -> None:
    """Before a retraining: is the config's schema valid and its suite current, and does every institution's
    extract pass it? Exit 1 unless every institution passes (exit 2: the schema or its suite)."""
    run_config, reports = validate_institutions(config)
    schema = run_config.data_schema
    failing = [r.institution for r in reports if not r.passed]
    said = f"schema {schema.name} version {schema.version} (suite {schema.suite}, current)"
    if failing:
        print_error(f"{said}: {len(failing)} of {len(reports)} institutions fail it: {', '.join(failing)}")
        raise typer.Exit(ExitCode.FAILED)
    console.print(f"{said}: all {len(reports)} institutions pass it; a retraining can start", highlight=False)


@app.command("infer")
def infer(
    input: list[Path] = typer.Option(
        ...,
        "--input",
        metavar="FILE",
        help="An extract (CSV or Parquet) to draft a "
        "schema from; repeat it for several institutions' files of one layout.",
    ),
    label: str = typer.Option(None, "--label", metavar="COLUMN", help="The label column (default: the last column)."),
    name: str = typer.Option(None, "--name", metavar="NAME", help="Schema name (default: the first file's name)."),
    id_column: str = typer.Option(
        None,
        "--id",
        metavar="COLUMN",
        help="The ID column (default: a column unique in every row that looks like one).",
    ),
) -> None:
    """Draft a schema that accepts every row of its source files, for review: types, ranges, levels, limits.
    Prints aggregates and level names only."""
    from contract.data import InstitutionDataError
    from contract.schema_inference import SchemaInferenceError, infer_schema

    try:
        console.print(
            infer_schema(input, label=label, name=name, id_column=id_column),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    except (InstitutionDataError, SchemaInferenceError) as error:
        print_error(error)
        raise typer.Exit(ExitCode.FAILED) from None
