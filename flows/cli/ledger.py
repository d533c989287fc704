"""`fedrisk ledger`: the differential privacy each retraining spent per institution, and what is left."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from flows.cli.common import load_run_config, settings
from flows.terminal import console
from hostguard.credentials import masked


def ledger(
    config: Path = typer.Option(
        None,
        "--config",
        "-c",
        metavar="PATH",
        help="A run config: show its institutions' privacy budgets and what is left.",
    ),
) -> None:
    """The privacy budget ledger: the epsilon each retraining spent on each institution, and the totals."""
    from tracking.ledger import read_ledger, spent_totals

    budgets = load_run_config(config).privacy_budgets() if config is not None else {}
    uri = settings().mlflow_tracking_uri
    entries = read_ledger(uri)
    if not entries:
        console.print(
            f"No differentially private retrainings yet in {masked(uri)}: nothing is spent"
            + (f" (budgets: {', '.join(f'{n} {b:g}' for n, b in sorted(budgets.items()))})" if budgets else "")
            + ".",
            highlight=False,
        )
        return
    table = Table(title=f"Privacy ledger ({masked(uri)})")
    for column in ("institution", "model", "version", "status", "epsilon", "delta"):
        table.add_column(column, justify="right" if column in ("epsilon", "delta") else "left")
    institutions = sorted({name for e in entries for name in e.epsilon} | set(budgets))
    for name in institutions:
        for e in entries:
            if name in e.epsilon:
                table.add_row(
                    name, e.model_name, e.version or "-", e.status, f"{e.epsilon[name]:.4f}", f"{e.delta[name]:.3g}"
                )
    table.caption = (
        "reserved: a retraining that has not finished (or died) counts its planned epsilon. Totals add "
        "up epsilons and deltas (basic composition)."
    )
    console.print(table)
    totals = Table(title="Spent per institution")
    for column in ("institution", "epsilon", "delta", "retrainings", "budget", "left"):
        totals.add_column(column, justify="left" if column == "institution" else "right")
    for name in institutions:
        epsilon, delta, on = spent_totals(entries, name)
        budget = budgets.get(name)
        totals.add_row(
            name,
            f"{epsilon:.4f}",
            f"{delta:.3g}",
            str(len(on)),
            "-" if budget is None else f"{budget:g}",
            "-" if budget is None else f"{budget - epsilon:.4f}",
        )
    console.print(totals)
