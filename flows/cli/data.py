"""`fedrisk data`: synthetic consortia, and a real extract split into simulated institutions."""

from __future__ import annotations

from pathlib import Path

import typer

from errors import ExitCode
from flows.cli.common import print_error
from flows.terminal import console

app = typer.Typer(help="Data utilities.", no_args_is_help=True)


def schema_named(name: str):
    """The committed schema `name`; an unknown or invalid one is one red line, exit 2."""
    from contract.schema import SchemaError, load_schema

    try:
        return load_schema(name)
    except SchemaError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None


@app.command("synth")
def synth(
    out: Path = typer.Option(
        ..., "--out", metavar="DIR", help="Directory to write <institution>/<schema file>.csv into."
    ),
    schema: str = typer.Option(
        "credit_default", "--schema", metavar="NAME", help="Schema (schemas/NAME.yaml) to follow."
    ),
    institutions: int = typer.Option(4, min=1, max=100, metavar="N", help="How many institutions."),
    seed: int = typer.Option(0, min=0, metavar="SEED", help="Random seed (same seed, same files)."),
    rows_scale: float = typer.Option(
        1.0, min=0.01, max=100.0, metavar="X", help="Multiplier on each institution's rows."
    ),
    change: list[str] = typer.Option(
        [],
        "--change",
        metavar="INSTITUTION.FIELD=VALUE",
        help="credit_default: change one portfolio this time (a later month with another --seed), e.g. "
        "dune_finance.median_limit=25000 or dune_finance.default_rate=0.5 (repeatable).",
    ),
) -> None:
    """Write a synthetic, non-IID consortium that follows a schema (another seed: another month of it)."""
    from contract.synthetic import CHANGEABLE, synthesize

    changes: dict[str, dict[str, float]] = {}
    for item in change:
        target, _, value = item.partition("=")
        institution, _, field = target.partition(".")
        try:
            if field not in CHANGEABLE:
                raise ValueError(f"FIELD is one of {', '.join(CHANGEABLE)}")
            changes.setdefault(institution, {})[field] = float(value)
        except ValueError as error:
            print_error(f"--change {item}: {error} (INSTITUTION.FIELD=NUMBER)")
            raise typer.Exit(ExitCode.USAGE) from None
    try:
        written = synthesize(out, institutions, seed, rows_scale, schema=schema_named(schema), changes=changes)
    except ValueError as error:
        print_error(f"--change: {error}")
        raise typer.Exit(ExitCode.USAGE) from None
    for name, path in written.items():
        console.print(f"{name}: {path}")


@app.command("split")
def split(
    input: Path = typer.Option(..., "--input", metavar="FILE", help="One extract (CSV or Parquet) to split."),
    schema: str = typer.Option(
        ..., "--schema", metavar="NAME", help="Its schema: the label to stratify on, the ID column."
    ),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Directory to write <institution>.csv into."),
    institutions: str = typer.Option(
        None,
        "--institutions",
        metavar="A,B,C",
        help="Names, comma-separated: "
        "institutions of equal size, stratified on the label (default: bank_a,bank_b,bank_c).",
    ),
    by: str = typer.Option(
        None,
        "--by",
        metavar="COLUMN",
        help="One institution per value of this column (a "
        "state, a branch), named after the value; the column is dropped.",
    ),
    keep_column: bool = typer.Option(
        False, "--keep-column", help="With --by: keep the column in the files (only when the schema declares it)."
    ),
    seed: int = typer.Option(0, min=0, metavar="SEED", help="Random seed (same seed, same split)."),
) -> None:
    """Split one real extract into a simulated consortium: institutions of equal size, stratified on the label, or
    one per value of a column (--by)."""
    import pandas as pd

    from contract.data import InstitutionDataError, read_bytes
    from contract.synthetic import split_by_column, split_file

    if by is not None and institutions is not None:
        print_error(
            "give --institutions (equal, stratified parts) or --by COLUMN (one institution per value), not both"
        )
        raise typer.Exit(ExitCode.USAGE)
    contract = schema_named(schema)
    names = [n.strip() for n in (institutions or "bank_a,bank_b,bank_c").split(",") if n.strip()]
    try:
        read_bytes("input", input)
        frame = pd.read_parquet(input) if input.suffix.lower() in {".parquet", ".pq"} else pd.read_csv(input)
    except (InstitutionDataError, ValueError) as error:
        print_error(error)
        raise typer.Exit(ExitCode.FAILED) from None
    if contract.label.column not in frame.columns:
        print_error(f"{input}: no label column {contract.label.column!r} (schema {contract.name})")
        raise typer.Exit(ExitCode.FAILED)
    try:
        written = (
            split_by_column(frame, by, contract.id, out, keep_column)
            if by is not None
            else split_file(frame, contract.label.column, names, seed, contract.id, out)
        )
    except ValueError as error:
        print_error(f"{input}: {error}")
        raise typer.Exit(ExitCode.FAILED) from None
    for name, path in written.items():
        console.print(f"{name}: {path}")
