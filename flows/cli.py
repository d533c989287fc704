"""The `fedrisk` command line: demo, retrain, validate, and synthetic data."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

import flows  # noqa: F401  (sets library defaults before they are imported)
from errors import ExitCode
from flows.config import ConfigError, load_config
from flows.settings import PROJECT_ROOT, Settings
from flows.terminal import console, status
from hostguard.credentials import masked
from runconfig import RunConfig


def _plain_placeholders(command) -> None:
    """Conventional help placeholders for `command` and everything under it: `--config PATH`, `DEPLOYMENT`,
    flags without one, instead of typer's type names (`<path>`, `{deployment}`, `<bool>`)."""
    for param in [*command.params, command.get_help_option(typer.Context(command))]:
        if param is not None and param.metavar is None:
            param.metavar = "" if getattr(param, "is_flag", False) else param.name.upper()
        if param is not None and param.param_type_name == "argument":
            # typer 0.29 writes a required argument as {NAME} in the usage line and adds its type (<str>);
            # tests/test_cli.py checks the help text, so a typer upgrade that changes these hooks shows.
            param._usage_display_name = lambda name=param.metavar: name
            param.display_type_rich = lambda ctx: None
    for sub in getattr(command, "commands", {}).values():
        _plain_placeholders(sub)


class PlainHelpGroup(TyperGroup):
    """The `fedrisk` command tree, with help that reads like the tools its users know."""

    def __init__(self, **attrs) -> None:
        super().__init__(**attrs)
        _plain_placeholders(self)


def print_error(message: object) -> None:
    """One red line of an error, printed as written: brackets in it (a name pattern `^[a-z][a-z0-9_]{0,62}$`, a
    path) are text, not Rich markup."""
    from rich.text import Text

    console.print(Text(str(message), style="red"))


app = typer.Typer(
    help="Federated credit-risk retraining: validate, train, evaluate, register.",
    no_args_is_help=True,
    add_completion=False,
    cls=PlainHelpGroup,
)
data_app = typer.Typer(help="Data utilities.", no_args_is_help=True)
app.add_typer(data_app, name="data")
models_app = typer.Typer(help="Registered models: list versions, promote by hand.", no_args_is_help=True)
app.add_typer(models_app, name="models")
schema_app = typer.Typer(help="Data contracts (schemas/NAME.yaml).", no_args_is_help=True)
app.add_typer(schema_app, name="schema")
node_app = typer.Typer(
    help="An institution's node (cross-silo): serve its fixed operations next to its data.", no_args_is_help=True
)
app.add_typer(node_app, name="node")
pki_app = typer.Typer(help="A development certificate authority for a consortium (mutual TLS).", no_args_is_help=True)
app.add_typer(pki_app, name="pki")
DEMO_CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"


def _load(path: Path) -> RunConfig:
    try:
        return load_config(path, expectations_dir=_settings().expectations_dir)
    except ConfigError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None


def _print_validation(reports, pages: dict[str, str]) -> None:
    """The validation outcome per institution, then where each one's checks page is (`pages`), a line each so
    that a link is never broken across lines."""
    from tasks.reporting import validation_rows

    table = Table(title="Validation")
    table.add_column("institution", no_wrap=True)
    for column in ("rows", "checks passed", "checks failed", "status", "reasons", "warnings"):
        table.add_column(column)
    for row in validation_rows(reports):
        colour = "green" if row["status"] == "admitted" else "red"
        table.add_row(
            row["institution"],
            str(row["rows"]),
            str(row["checks passed"]),
            str(row["checks failed"]),
            f"[{colour}]{row['status']}[/{colour}]",
            row["reasons"].replace("; ", "\n"),
            row["warnings"].replace("; ", "\n"),
        )
    console.print(table)
    if pages:
        console.print("Checks pages:")
    for name, page in pages.items():
        console.print(f"  {name}: {page}", soft_wrap=True, highlight=False)


def _print_summary(summary) -> None:
    from engines.privacy import privacy_sentence
    from institution.evaluation import pooled_ece, weighted_metrics
    from tasks.reporting import training_sentence, validation_page_urls

    _print_validation(
        summary.validation, validation_page_urls(_settings().mlflow_ui_url, summary.registration, summary.validation)
    )
    console.print(training_sentence(summary.training))
    console.print(privacy_sentence(summary.privacy), highlight=False)
    names = {
        "roc_auc": "ROC AUC",
        "pr_auc": "PR AUC",
        "ks": "KS",
        "brier": "Brier",
        "ece": "ECE",
        "recall_at_fpr": "recall@FPR",
    }
    table = Table(title=f"Holdout metrics of the new model ({summary.model_name})")
    table.add_column("institution", no_wrap=True)
    for column in ["rows", *names.values()]:
        table.add_column(column, justify="right")
    for e in summary.evaluations:
        m = e.metrics["challenger"]
        table.add_row(e.institution, str(e.examples), *[f"{m[n]:.4f}" for n in names])
    w = summary.weighted
    table.add_row("weighted", str(sum(e.examples for e in summary.evaluations)), *[f"{w[n]:.4f}" for n in names])
    console.print(table)
    console.print(
        f"weighted: each figure's mean over institutions, by holdout rows; pooled ECE over all holdout rows "
        f"(the promotion guardrail's figure): {pooled_ece(summary.evaluations):.4f}",
        highlight=False,
    )
    others = {"champion": "champion", "local_only": "local-only", "pooled": "pooled data"}
    shown = [role for role in others if any(role in e.metrics for e in summary.evaluations)]
    if shown:
        compared = Table(title="ROC AUC of the new model against the alternatives")
        compared.add_column("institution", no_wrap=True)
        for column in ["new model", *[others[r] for r in shown]]:
            compared.add_column(column, justify="right")
        for e in summary.evaluations:
            compared.add_row(
                e.institution,
                f"{e.metrics['challenger']['roc_auc']:.4f}",
                *["-" if r not in e.metrics else f"{e.metrics[r]['roc_auc']:.4f}" for r in shown],
            )
        # The same weighting as the new model's "weighted" row; over fewer institutions where one lacks a figure.
        partial = [r for r in shown if not all(r in e.metrics for e in summary.evaluations)]
        compared.add_row(
            "weighted",
            f"{summary.weighted['roc_auc']:.4f}",
            *[f"{weighted_metrics(summary.evaluations, r)['roc_auc']:.4f}{'*' if r in partial else ''}" for r in shown],
        )
        notes = (
            ["weighted: by holdout rows"]
            + (["* over the institutions that have the figure"] if partial else [])
            + (
                ["local-only, pooled data: simulation-mode baselines (this run read every institution's rows)"]
                if {"local_only", "pooled"} & set(shown)
                else []
            )
        )
        compared.caption = "; ".join(notes)
        console.print(compared)
    reg = summary.registration
    console.print(
        f"Registered [bold]{reg.model_name}[/bold] version [bold]{reg.version}[/bold] "
        f"(aliases: {', '.join(reg.aliases)}); MLflow run {reg.run_id}"
    )
    console.print(f"Champion: {reg.reason}")
    for check in reg.checks:
        colour = "green" if check.startswith("pass") else "red"
        console.print(f"  [{colour}]{check}[/{colour}]")


@app.callback()
def main(
    context: typer.Context,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also show what the libraries log (TensorFlow, MLflow, Prefect's bookkeeping)."
    ),
) -> None:
    """Federated credit-risk retraining: validate, train, evaluate, register."""
    from flows.terminal import set_up

    global _read
    _read = Settings()  # read once per command, here; every command below takes it from _settings()
    context.call_on_close(_forget_settings)  # the next command (in this process: tests) reads them anew
    set_up(verbose, _read.log_file)


def _forget_settings() -> None:
    global _read
    _read = None


_read: Settings | None = None  # this command's settings, as the callback read them


def _settings() -> Settings:
    """This command's settings, as the `fedrisk` callback read them from the environment."""
    return _read if _read is not None else Settings()


def _prefect_api():
    """The Prefect API this command's flow runs go to, saying so when it has to start one (a few seconds)."""
    from prefect.settings import PREFECT_API_URL

    from flows.prefect_api import prefect_api, started_early

    settings = _settings()
    if not PREFECT_API_URL.value() and not started_early():
        status("starting a temporary Prefect API (set PREFECT_API_URL to use a Prefect server)")
    return prefect_api(settings.prefect_start_seconds, settings.log_file.parent, status)


@contextmanager
def _prefect_api_starting_early() -> Iterator[None]:
    """For a command that runs flows: start the temporary Prefect API (when no server is set) before anything
    else, so that its start-up overlaps the command's own imports, config and data checks."""
    from prefect.settings import PREFECT_API_URL

    from flows.prefect_api import starting_early

    if not PREFECT_API_URL.value():
        status("starting a temporary Prefect API (set PREFECT_API_URL to use a Prefect server)")
    with starting_early(_settings().log_file.parent):
        yield


def _run(config: RunConfig) -> None:
    from mlflow.exceptions import MlflowException

    from consortium.nodes import NodeError, TrainingStopped
    from contract.data import InstitutionDataError
    from engines.privacy import PrivacyPlanError
    from errors import first_line
    from fed_trees.training import FederatedTreesUnavailable, TreeTrainingFailed
    from flows.lock import LockLost, LockUnavailable, RetrainingBusy
    from flows.prefect_api import PrefectApiUnavailable
    from flows.retrain import retrain
    from flows.terminal import quiet_mlflow, round_progress
    from hostguard.loopback import WorkerExposureRefused
    from institution.validation import QuorumNotMet
    from tasks.training import import_engine_in_background
    from tracking.privacy import PrivacyBudgetExceeded

    import_engine_in_background()
    quiet_mlflow()
    try:
        with _prefect_api(), round_progress():
            summary = retrain(config)
    except (
        QuorumNotMet,
        InstitutionDataError,
        RetrainingBusy,
        LockUnavailable,
        LockLost,
        PrivacyBudgetExceeded,
        WorkerExposureRefused,
        NodeError,
        TrainingStopped,
        PrefectApiUnavailable,
        TreeTrainingFailed,
        FederatedTreesUnavailable,
    ) as error:
        console.print(f"[red]Retraining stopped:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None
    except PrivacyPlanError as error:
        console.print(f"[red]Retraining stopped, bad privacy settings:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None
    except MlflowException as error:
        console.print(
            f"[red]Retraining stopped: MLflow tracking at {escape(masked(_settings().mlflow_tracking_uri))} "
            f"failed:[/red] {escape(first_line(error))}\nNothing was registered."
        )
        raise typer.Exit(ExitCode.FAILED) from None
    _print_summary(summary)


@app.command()
def demo(
    data_dir: Path = typer.Option(
        None, metavar="DIR", help="Where the synthetic institutions live (default: data/demo)."
    ),
    cross_silo: bool = typer.Option(
        False,
        "--cross-silo",
        help="Run each institution as a fedrisk node (its own "
        "process and directory, mutual TLS) and retrain "
        "through them.",
    ),
) -> None:
    """Synthesize the demo consortium if absent, then run one retraining on it."""
    with _prefect_api_starting_early():
        from contract.synthetic import data_file, synthesize

        config = _load(DEMO_CONFIG)
        data_dir = (data_dir or _settings().demo_data_dir).resolve()
        for institution in config.institutions:
            institution.path = data_dir / institution.name / data_file(config.data_schema.name)
        if not all(i.path.exists() for i in config.institutions):
            written = synthesize(
                data_dir, n_institutions=len(config.institutions), seed=config.seed, schema=config.data_schema
            )
            unknown = sorted({i.name for i in config.institutions} - set(written))
            if unknown:
                print_error(f"{DEMO_CONFIG}: institutions {unknown} are not synthetic portfolios")
                raise typer.Exit(ExitCode.USAGE)
            console.print(f"Synthesized {len(written)} institutions into {data_dir}")
        if cross_silo:
            from flows.cross_silo_demo import nodes_for

            with nodes_for(config, data_dir.parent / "demo-cross-silo", console) as coordinator_config:
                _run(coordinator_config)
            return
        _run(config)


@app.command("retrain")
def retrain_command(
    config: Path = typer.Option(..., "--config", "-c", metavar="PATH", help="Run config (YAML)."),
) -> None:
    """Validate, train, evaluate and register the model a config describes."""
    with _prefect_api_starting_early():
        _run(_load(config))


@app.command()
def validate(config: Path = typer.Option(..., "--config", "-c", metavar="PATH", help="Run config (YAML).")) -> None:
    """Check every institution's extract; exit 1 when fewer than the quorum pass."""
    run_config, reports = _validate_institutions(config)
    passed = sum(r.passed for r in reports)
    if passed < run_config.quorum:
        print_error(f"{passed} of {len(reports)} institutions passed; quorum is {run_config.quorum}")
        raise typer.Exit(ExitCode.FAILED)
    console.print(f"{passed} of {len(reports)} institutions passed; quorum {run_config.quorum} met")


def _validate_institutions(config: Path):
    """The run config (its schema's committed suite confirmed current, else exit 2) and every institution's
    validation report, printed."""
    from flows.prefect_api import PrefectApiUnavailable
    from flows.validate import validate_consortium

    try:
        with _prefect_api_starting_early():
            run_config = _load(config)
            with _prefect_api():
                reports = validate_consortium(run_config)
    except PrefectApiUnavailable as error:
        console.print(f"[red]Validation not run:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None
    _print_validation(reports, {r.institution: r.data_docs for r in reports if r.data_docs})
    return run_config, reports


@schema_app.command("check")
def schema_check(config: Path = typer.Option(..., "--config", "-c", metavar="PATH", help="Run config (YAML).")) -> None:
    """Before a retraining: is the config's schema valid and its suite current, and does every institution's
    extract pass it? Exit 1 unless every institution passes (exit 2: the schema or its suite)."""
    run_config, reports = _validate_institutions(config)
    schema = run_config.data_schema
    failing = [r.institution for r in reports if not r.passed]
    said = f"schema {schema.name} version {schema.version} (suite {schema.suite}, current)"
    if failing:
        print_error(f"{said}: {len(failing)} of {len(reports)} institutions fail it: {', '.join(failing)}")
        raise typer.Exit(ExitCode.FAILED)
    console.print(f"{said}: all {len(reports)} institutions pass it; a retraining can start", highlight=False)


def _schema(name: str):
    from contract.schema import SchemaError, load_schema

    try:
        return load_schema(name)
    except SchemaError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None


@data_app.command("synth")
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
) -> None:
    """Write a synthetic, non-IID consortium that follows a schema."""
    from contract.synthetic import synthesize

    for name, path in synthesize(out, institutions, seed, rows_scale, schema=_schema(schema)).items():
        console.print(f"{name}: {path}")


@data_app.command("split")
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
    contract = _schema(schema)
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


@schema_app.command("infer")
def schema_infer(
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


def _reference(reference: str) -> tuple[str, str | None, str | None]:
    from tracking.lineage import parse_reference

    try:
        return parse_reference(reference)
    except ValueError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None


@models_app.command("list")
def models_list(name: str = typer.Argument(..., help="Registered model name.")) -> None:
    """Versions of a model, newest first: aliases, promotion decision, weighted holdout metrics."""
    from tracking.versions import COMPLETE, SUMMARY_METRICS, list_versions

    try:
        versions = list_versions(_settings().mlflow_tracking_uri, name)
    except LookupError as error:
        print_error(error)
        raise typer.Exit(ExitCode.FAILED) from None
    table = Table(title=f"{name} ({masked(_settings().mlflow_tracking_uri)})")
    for column in ("version", "registered", "aliases", "decision", *SUMMARY_METRICS, "epsilon"):
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
            )
    table.caption = (
        "Holdout metrics of each version when registered: ece pooled over institutions, the others "
        "example-weighted; epsilon: the most differential privacy spent on one institution. Where a "
        "version came from: fedrisk lineage NAME/VERSION"
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


@models_app.command("promote")
def models_promote(
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
        previous = promote_manually(_settings().mlflow_tracking_uri, name, version, reason, getpass.getuser())
    except (LookupError, ValueError) as error:
        print_error(error)
        raise typer.Exit(ExitCode.FAILED) from None
    console.print(
        f"{name} version {version} is now champion (was: {previous or 'none'}); reason recorded: {escape(reason)}"
    )


@app.command()
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

    budgets = _load(config).privacy_budgets() if config is not None else {}
    uri = _settings().mlflow_tracking_uri
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


@app.command()
def lineage(
    reference: str = typer.Argument(
        ..., metavar="NAME@ALIAS|NAME/VERSION", help="NAME@ALIAS (e.g. credit_default@champion) or NAME/VERSION."
    ),
) -> None:
    """Trace a model version to its MLflow run, Prefect flow run, code, config, suite and data; check each link."""
    from tracking.lineage import trace

    _reference(reference)
    settings = _settings()
    try:
        headline, links = trace(
            settings.mlflow_tracking_uri, reference, PROJECT_ROOT, settings.expectations_dir, settings.mlflow_ui_url
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


@app.command()
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

    name, alias, version = _reference(model)
    settings = _settings()
    try:
        with console.status(f"Scoring {escape(str(input))}") as status:
            result = score_file(
                settings.mlflow_tracking_uri,
                name,
                alias,
                version,
                input,
                output,
                settings.expectations_dir,
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


def _deployments(prefect_file: Path):
    from flows.deployments import DeploymentError, load_deployments, require_server

    try:
        specs = load_deployments(prefect_file)
        url = require_server()
    except DeploymentError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None
    return specs, url


def _schedule_text(spec) -> str:
    return (
        "; ".join(f"cron '{s.cron}' ({s.timezone})" + ("" if s.active else ", paused") for s in spec.schedules)
        or "no schedule (trigger only)"
    )


PREFECT_FILE_OPTION = typer.Option(
    PROJECT_ROOT / "prefect.yaml", "--prefect-file", metavar="PATH", help="Deployments to use."
)


@app.command()
def serve(prefect_file: Path = PREFECT_FILE_OPTION) -> None:
    """Serve the deployments of prefect.yaml on their schedules from this process (no work pool); Ctrl-C stops."""
    from flows.deployments import serve as serve_deployments

    specs, url = _deployments(prefect_file)

    def ready(ids: list[str]) -> None:
        for spec in specs:
            console.print(
                f"serving [bold]retrain-from-config/{spec.name}[/bold]: {_schedule_text(spec)}", highlight=False
            )
        console.print(
            f"Prefect API {masked(url)}: scheduled and triggered runs start in this process; Ctrl-C stops it "
            f"(and pauses the schedules). Trigger one: fedrisk trigger {specs[0].name}",
            highlight=False,
        )

    serve_deployments(specs, ready)


@app.command()
def deploy(prefect_file: Path = PREFECT_FILE_OPTION) -> None:
    """Register the deployments of prefect.yaml on the running Prefect server, for a process worker to run."""
    from flows.deployments import DeploymentError
    from flows.deployments import deploy as deploy_deployments

    specs, url = _deployments(prefect_file)
    try:
        deploy_deployments(specs)
    except DeploymentError as error:
        print_error(error)
        raise typer.Exit(ExitCode.FAILED) from None
    for spec in specs:
        console.print(
            f"deployed [bold]retrain-from-config/{spec.name}[/bold] to work pool {spec.work_pool.name}: "
            f"{_schedule_text(spec)}",
            highlight=False,
        )
    pools = sorted({s.work_pool.name for s in specs})
    console.print("Runs wait for a worker: " + "; ".join(f"prefect worker start --pool {p}" for p in pools))


@app.command()
def trigger(
    deployment: str = typer.Argument(..., help="Deployment name (credit-default-weekly) or FLOW/DEPLOYMENT."),
    param: list[str] = typer.Option(
        [],
        "--param",
        "-p",
        metavar="KEY=VALUE",
        help="KEY=VALUE: config_file=..., or a dotted config key such as training.rounds=5 (repeatable).",
    ),
    timeout: float = typer.Option(
        None,
        "--timeout",
        min=0,
        metavar="SECONDS",
        help="Stop following after this many seconds (the run goes on); exit code 5.",
    ),
) -> None:
    """Start a run of a deployment on the Prefect server and follow it to the end.

    Exit code: 0 completed, 1 failed, 2 refused before starting (bad parameter or config, unknown deployment, no
    server), 3 crashed, 4 cancelled, 5 still running when --timeout passed.
    """
    from flows.config import ConfigError, load_config
    from flows.deployments import DeploymentError, require_server
    from flows.retrain import flow_run_url, resolve_config_file
    from flows.terminal import is_status_line, verbose
    from flows.trigger import EXIT_CODES, STILL_RUNNING_EXIT_CODE, find_deployment, follow, parse_params, start

    try:
        require_server()
        target = find_deployment(deployment)
        parameters = parse_params(param, set(target.parameter_openapi_schema.get("properties", {})))
        merged = {**target.parameters, **parameters}
        config_file = resolve_config_file(str(merged.get("config_file", "")))
        if config_file.is_file():  # checked here too, so a bad override never reaches the worker
            load_config(config_file, merged.get("overrides") or {}, expectations_dir=_settings().expectations_dir)
    except (DeploymentError, ConfigError, ValueError) as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None
    run = start(target, parameters)
    page = flow_run_url(run.id)
    console.print(f"Started flow run [bold]{run.name}[/bold] ({run.id}) of {deployment}: {page}", highlight=False)

    def on_log(log) -> None:  # the run's status lines; libraries' lines and bookkeeping stay in the Prefect UI
        if verbose() or is_status_line(log.name, log.level, log.message):
            console.print(f"{log.timestamp:%H:%M:%S} {log.message}", highlight=False, markup=False)

    def on_state(state: str) -> None:
        console.print(f"[bold]state: {state}[/bold]")
        if state == "Late":
            pools = f"prefect worker start --pool {target.work_pool_name}" if target.work_pool_name else None
            console.print(
                "nothing has picked the run up yet: is `fedrisk serve` running"
                + (f", or `{pools}`?" if pools else "?"),
                highlight=False,
            )

    finished = follow(run.id, on_log, on_state, timeout_seconds=timeout)
    if finished is None:
        console.print(f"still running after {timeout:g} s; follow it in the Prefect UI: {page}", highlight=False)
        raise typer.Exit(STILL_RUNNING_EXIT_CODE)
    if finished.summary and console.is_terminal:
        from rich.markdown import Markdown

        console.print(Markdown(finished.summary))
    elif finished.summary:  # piped or logged: the summary's own Markdown, not centred across 4,096 columns
        console.print(finished.summary, markup=False, highlight=False)
    colour = "green" if finished.state == "COMPLETED" else "red"
    console.print(f"[{colour}]{finished.name}: {finished.state}[/{colour}] {finished.message}", highlight=False)
    raise typer.Exit(EXIT_CODES.get(finished.state, ExitCode.FAILED))


def _pki(action):
    """A PKI step's result; its PkiError (an existing file, a bad name or host, no CA) is one red line, exit 1."""
    from hostguard.pki import PkiError

    try:
        return action()
    except PkiError as error:
        print_error(error)
        raise typer.Exit(ExitCode.FAILED) from None


@pki_app.command("init")
def pki_init(
    directory: Path = typer.Option(Path("pki"), "--dir", metavar="DIR", help="Where the CA's files go."),
) -> None:
    """Create a development consortium CA (ca.crt, ca.key)."""
    from hostguard.pki import init_ca

    console.print(f"CA: {_pki(lambda: init_ca(directory))}")


@pki_app.command("issue")
def pki_issue(
    name: str = typer.Argument(..., help="The holder: an institution's name, or coordinator."),
    directory: Path = typer.Option(
        Path("pki"), "--dir", metavar="DIR", help="The CA's directory (certificates go there too)."
    ),
    host: list[str] = typer.Option(
        [], "--host", metavar="HOST", help="A DNS name or IP the holder is reached at (repeatable)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing certificate and key."),
) -> None:
    """Issue NAME.crt and NAME.key where the CA is (one machine; across institutions use request and sign)."""
    from hostguard.pki import issue

    cert, key = _pki(lambda: issue(directory, name, tuple(host), force))
    console.print(f"{name}: {cert} (key {key})")


@pki_app.command("request")
def pki_request(
    name: str = typer.Argument(..., help="This institution's name (or coordinator)."),
    directory: Path = typer.Option(Path("tls"), "--dir", metavar="DIR", help="Where its key and request go."),
    host: list[str] = typer.Option(
        [], "--host", metavar="HOST", help="A DNS name or IP it is reached at (repeatable)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing key and request."),
) -> None:
    """At the institution: make its private key (mode 0600; it never leaves) and NAME.csr to send to the CA."""
    from hostguard.pki import request

    csr, key = _pki(lambda: request(directory, name, tuple(host), force))
    console.print(
        f"{name}: key {key} (keep it here), request {csr}: send it to the consortium's CA, which runs "
        f"`fedrisk pki sign {csr.name}` and sends back {name}.crt and ca.crt",
        highlight=False,
    )


@pki_app.command("sign")
def pki_sign(
    csr: Path = typer.Argument(..., metavar="CSR", help="A holder's certificate signing request (NAME.csr)."),
    directory: Path = typer.Option(Path("pki"), "--dir", metavar="DIR", help="The CA's directory."),
    force: bool = typer.Option(False, "--force", help="Replace an existing certificate of that holder."),
) -> None:
    """At the CA: sign a holder's request into NAME.crt (the holder's key never comes here)."""
    from hostguard.pki import sign

    cert = _pki(lambda: sign(directory, csr, force))
    console.print(f"{cert}: send it with {directory / 'ca.crt'} back to its holder", highlight=False)


@node_app.command("serve")
def node_serve(
    config: Path = typer.Option(
        ..., "--config", "-c", metavar="PATH", help="The node's config (YAML), kept at the institution."
    ),
) -> None:
    """Serve this institution's fixed operations to the consortium's coordinator (mutual TLS) until stopped."""
    from hostguard import loopback
    from node.config import NodeConfigError, load_node_config

    try:
        node_config = load_node_config(config)
    except NodeConfigError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None
    from hostguard.pki import PkiError, validity

    try:
        warning = validity(node_config.tls.cert)
    except PkiError as error:
        print_error(f"node {node_config.institution} does not start: {error}")
        raise typer.Exit(ExitCode.FAILED) from None
    if warning:
        console.print(f"[yellow]node {node_config.institution}: {escape(warning)}[/yellow]", highlight=False)
    try:
        isolation = loopback.isolation(_settings().allow_exposed_worker, "TFF worker")
    except loopback.WorkerExposureRefused as error:
        print_error(error)
        raise typer.Exit(ExitCode.FAILED) from None
    from node.server import serve_until_stopped

    def listening(port: int) -> None:
        host = node_config.listen.rsplit(":", 1)[0]
        console.print(
            f"node {node_config.institution} listening on {host}:{port} (mutual TLS; answers only "
            f"'{node_config.coordinator}'); schema {node_config.schema_name}; extract "
            f"{node_config.extract.path}",
            highlight=False,
            soft_wrap=True,
        )

    try:
        serve_until_stopped(node_config, _settings().expectations_dir, isolation, listening)
    except OSError as error:
        print_error(f"node {node_config.institution}: cannot listen on {node_config.listen}: {error}")
        raise typer.Exit(ExitCode.FAILED) from None


@node_app.command("audit")
def node_audit(
    config: Path = typer.Option(..., "--config", "-c", metavar="PATH", help="The node's config (YAML)."),
    last: int = typer.Option(50, "--last", min=1, help="How many of the latest requests to show."),
) -> None:
    """What this node served and refused: each request of its audit trail (work_dir/audit.jsonl), newest last."""
    from rich.table import Table

    from node.audit import AuditTrail
    from node.config import NodeConfigError, load_node_config

    try:
        node_config = load_node_config(config)
    except NodeConfigError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None
    trail = AuditTrail(node_config.work_dir)
    entries = trail.read()
    if not entries:
        console.print(f"node {node_config.institution}: no request recorded yet in {trail.path}", highlight=False)
        return
    table = Table(
        title=f"node {node_config.institution}: the last {min(last, len(entries))} of {len(entries)} "
        f"requests ({trail.path})",
        title_justify="left",
    )
    for column in (
        "time (UTC)",
        "peer",
        "operation",
        "outcome",
        "run",
        "round",
        "epsilon",
        "bytes",
        "settings / reason",
    ):
        table.add_column(column, overflow="fold")
    for entry in entries[-last:]:
        told = entry.reason or ", ".join(f"{k} {v}" for k, v in entry.parameters.items())
        style = {"refused": "yellow", "failed": "red"}.get(entry.outcome, "")
        table.add_row(
            entry.at[:23].replace("T", " "),
            entry.peer,
            entry.operation,
            entry.outcome,
            entry.run or "",
            "" if entry.round is None else str(entry.round),
            "" if entry.epsilon is None else f"{entry.epsilon:.4f}",
            f"{entry.bytes_returned:,}",
            told,
            style=style,
        )
    console.print(table)


if __name__ == "__main__":  # `python -m flows.cli`, as the cross-silo demo starts its nodes
    app()
