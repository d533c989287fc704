"""`fedrisk monitor`: the champion's monitoring report, for the consortium (a Prefect flow over the institutions)
or for one institution's own extract (a local check, nothing logged)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from errors import ExitCode
from flows.cli.common import load_run_config, prefect_api, prefect_api_starting_early, print_error, settings
from flows.cli.lineage import model_reference
from flows.terminal import console

STATUS_COLOURS = {"stable": "green", "warn": "yellow", "act": "red"}


def print_report(report, against: str, warn: float) -> None:
    """One scope's report: stability (the grades, and the features at or above `warn`), then the back-test per
    grade when outcomes matured, then what it calls for."""
    from monitoring.report import grade_table

    colour = STATUS_COLOURS[report.status]
    console.print(
        f"[bold]{escape(report.scope)}[/bold]: {report.rows:,} rows against {report.development_rows:,} at "
        f"development ({escape(against)}): [{colour}]{report.status}[/{colour}]",
        highlight=False,
    )
    table = Table(title="Stability index (PSI) against development")
    table.add_column("what", no_wrap=True)
    table.add_column("index", justify="right")
    table.add_row("grades", f"{report.grade_stability:.3f}")
    shifted = {name: value for name, value in report.feature_stability.items() if value >= warn}
    for name, value in sorted(shifted.items(), key=lambda item: -item[1]):
        table.add_row(name, f"{value:.3f}")
    others = len(report.feature_stability) - len(shifted)
    if others:  # the full list is in the MLflow run (feature_stability/NAME)
        table.caption = f"{'the' if not shifted else 'the other'} {others} features: below {warn:g}"
    console.print(table)
    if report.backtest is None:
        console.print("no matured outcomes in the extract (no label column): stability only")
    else:
        b = report.backtest
        grades = Table(title="Back-test per grade (Jeffreys test: p small when more defaulted than the PD)")
        for column in ("grade", "rows", "defaults", "observed", "PD", "predicted", "p-value"):
            grades.add_column(column, justify="left" if column == "grade" else "right", no_wrap=True)
        for row in grade_table(report):
            grades.add_row(*row)
        console.print(grades)
        console.print(
            f"grade AUC {b.auc:.3f} (development {b.development_auc:.3f}, p {b.auc_p_value:.3g} for a fall); "
            f"KS {b.ks:.3f} (development {b.development_ks:.3f}); "
            f"concentration (Herfindahl) {report.concentration:.3f}",
            highlight=False,
        )
    for text in report.breaches:
        console.print(f"  [red]act:[/red] {escape(text)}", highlight=False)
    for text in report.shifts:
        console.print(f"  [yellow]warn:[/yellow] {escape(text)}", highlight=False)


def monitor(
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        metavar="PATH",
        help="Run config: monitor its model's champion at every institution (each one's monitoring_path); with "
        "--input, only its monitoring thresholds are used.",
    ),
    model: str | None = typer.Option(
        None, "--model", metavar="NAME@ALIAS", help="With --input: the version to check (e.g. credit_default@champion)."
    ),
    input: Path | None = typer.Option(
        None,
        "--input",
        metavar="FILE",
        help="One institution's own extract of its scoring population (CSV or Parquet; with the label column once "
        "outcomes have matured): a local check, nothing logged.",
    ),
    institution: str | None = typer.Option(
        None,
        "--institution",
        metavar="NAME",
        help="With --input: compare with this institution's own development sample (else the consortium's).",
    ),
) -> None:
    """The champion's monitoring report: population stability against development and, with matured outcomes, a
    back-test of each grade and of discriminatory power; exit 6 when a threshold calls for retraining."""
    if input is not None:
        if model is None:
            print_error("--input needs --model NAME@ALIAS: the version to check")
            raise typer.Exit(ExitCode.USAGE)
        _local(model, input, institution, config)
        return
    if config is None:
        print_error("give --config PATH (the consortium) or --model NAME@ALIAS --input FILE (one institution)")
        raise typer.Exit(ExitCode.USAGE)
    if model is not None or institution is not None:
        print_error("--model and --institution go with --input (a local check); --config alone monitors the champion")
        raise typer.Exit(ExitCode.USAGE)
    _consortium(config)


def _local(model: str, input: Path, institution: str | None, config: Path | None) -> None:
    """One institution's check of its own extract, where it is: counts, then the report, printed."""
    from contract.data import InstitutionDataError
    from institution.monitoring import monitor_extract
    from institution.scoring import ScoringInputRejected
    from monitoring.report import monitoring_report
    from riskmodel import model as exported
    from runconfig import MonitoringConfig
    from tracking.monitoring import monitored_version

    thresholds = load_run_config(config).monitoring if config is not None else MonitoringConfig()
    name, alias, version = model_reference(model)
    read = settings()
    with tempfile.TemporaryDirectory(prefix="fedrisk-monitor-") as scratch:
        try:
            monitored = monitored_version(read.mlflow_tracking_uri, name, alias, version, Path(scratch))
            if institution is not None and institution not in monitored.reference.institutions:
                raise LookupError(
                    f"{monitored.label} was not developed with institution {institution!r} (its institutions: "
                    f"{', '.join(monitored.reference.institutions)})"
                )
            with console.status(f"Scoring {escape(str(input))} with {monitored.label}"):
                extract = monitor_extract(input, monitored.schema, exported.load(monitored.model_path))
        except ScoringInputRejected as error:
            print_error(f"{input}: rejected, nothing was counted: " + "; ".join(error.reasons))
            raise typer.Exit(ExitCode.FAILED) from None
        except (InstitutionDataError, LookupError) as error:  # the institution's own file: values shown
            print_error(getattr(error, "detail", None) or error)
            raise typer.Exit(ExitCode.FAILED) from None
    development = monitored.reference.institutions[institution] if institution else monitored.reference.consortium
    against = f"{institution}'s development sample" if institution else "the consortium's development sample"
    if extract.not_counted:
        console.print(
            f"{extract.not_counted:,} of {extract.rows:,} rows failed a per-row check of suite "
            f"{monitored.schema.suite} and were not counted (fedrisk score names each row's failed checks)",
            highlight=False,
        )
    report = monitoring_report(institution or input.name, development, extract.counts, thresholds)
    console.print(f"Monitoring {monitored.label} on {escape(str(input))}", highlight=False)
    print_report(report, against, thresholds.stability_warn)
    if report.status == "act":
        raise typer.Exit(ExitCode.BREACHED)


def _consortium(config: Path) -> None:
    """The monitoring flow over every institution of the config; its report printed, exit 6 on a breach."""
    from flows.monitor import monitor_champion
    from flows.prefect_api import PrefectApiUnavailable

    try:
        with prefect_api_starting_early():
            run_config = load_run_config(config)
            with prefect_api():
                outcome = monitor_champion(run_config)
    except PrefectApiUnavailable as error:
        console.print(f"[red]Monitoring not run:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None
    except LookupError as error:
        print_error(error)
        raise typer.Exit(ExitCode.FAILED) from None
    console.print(f"Monitoring {outcome.label} for {outcome.period}", highlight=False)
    for report in outcome.reports:
        against = "its own development sample" if report.scope != "consortium" else "the consortium's"
        print_report(report, against, run_config.monitoring.stability_warn)
    for line in outcome.links:
        console.print(line, soft_wrap=True, highlight=False)
    if outcome.status == "act":
        raise typer.Exit(ExitCode.BREACHED)
