"""The commands that run the pipeline's flows: `demo`, `retrain`, `validate`; what a retraining printed at its end."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from errors import ExitCode
from flows.cli.common import (
    load_run_config,
    prefect_api,
    prefect_api_starting_early,
    print_error,
    print_validation,
    settings,
)
from flows.settings import PROJECT_ROOT
from flows.terminal import activity, console, status
from hostguard.credentials import masked
from runconfig import RunConfig

DEMO_CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"


def print_summary(summary) -> None:
    """A retraining's outcome: validation, training, privacy, holdout metrics, the alternatives, registration."""
    from engines.privacy import privacy_sentence
    from institution.evaluation import pooled_ece, weighted_metrics
    from tasks.reporting import training_sentence, validation_page_urls
    from tracking.versions import MODEL_CARD_ARTIFACT, experiment_page_url, run_page_url, version_page_url

    print_validation(
        summary.validation, validation_page_urls(settings().mlflow_ui_url, summary.registration, summary.validation)
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
        table.add_row(e.institution, f"{e.examples:,}", *[f"{m[n]:.4f}" for n in names])
    w = summary.weighted
    table.add_row("weighted", f"{sum(e.examples for e in summary.evaluations):,}", *[f"{w[n]:.4f}" for n in names])
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
    aliases = ", ".join(reg.aliases)
    console.print(f"Registered [bold]{reg.model_name}[/bold] version [bold]{reg.version}[/bold] (aliases: {aliases})")
    console.print(f"Champion: {reg.reason}")
    for check in reg.checks:
        if check.split(": ", 1)[-1] in reg.reason:
            continue  # the decision's reason already says it
        colour = "green" if check.startswith("pass") else "red"
        console.print(f"  [{colour}]{check}[/{colour}]")
    ui = settings().mlflow_ui_url
    for what, link in (  # a line each, never broken: what a terminal opens with a click
        ("Version", version_page_url(ui, reg.model_name, reg.version)),
        ("Experiment (every retraining)", experiment_page_url(ui, reg.experiment_id)),
        ("MLflow run", run_page_url(ui, reg.experiment_id, reg.run_id)),
        ("Model card", run_page_url(ui, reg.experiment_id, reg.run_id, MODEL_CARD_ARTIFACT)),
    ):
        console.print(f"{what}: {link}", soft_wrap=True, highlight=False)


def import_ahead(config: RunConfig) -> threading.Thread:
    """Import, on a daemon thread, what the retraining will import later in its stages (GX for validation,
    the engine's training modules, the registration's plotting): paid while the Prefect API starts, which
    the command would otherwise only wait for (10-15 s on 2 cores for TensorFlow and TFF)."""
    from engines.registry import engine_for

    modules = ["great_expectations", *engine_for(config.training).modules, "tracking.plots"]

    def load() -> None:
        try:
            for module in modules:
                importlib.import_module(module)
        except Exception:  # noqa: S110 - the stage that imports it again says what is wrong, where it belongs
            pass

    thread = threading.Thread(target=load, name="import-ahead", daemon=True)
    thread.start()
    return thread


def _run(config: RunConfig) -> None:
    import_ahead(config)
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
    from tracking.privacy import PrivacyBudgetExceeded

    quiet_mlflow()
    activity(f"starting the retraining of {config.model_name}")
    try:
        with prefect_api(), round_progress():
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
            f"[red]Retraining stopped: MLflow tracking at {escape(masked(settings().mlflow_tracking_uri))} "
            f"failed:[/red] {escape(first_line(error))}\nNothing was registered."
        )
        raise typer.Exit(ExitCode.FAILED) from None
    print_summary(summary)
    activity("finishing: the last log lines to Prefect, then stopping what this command started")


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
    with prefect_api_starting_early():
        from contract.synthetic import data_file, synthesize

        config = load_run_config(DEMO_CONFIG)
        data_dir = (data_dir or settings().demo_data_dir).resolve()
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
            status(f"Synthesized {len(written)} institutions into {data_dir}")  # a status line, with its time
        if cross_silo:
            from flows.cross_silo_demo import nodes_for

            with nodes_for(config, data_dir.parent / "demo-cross-silo", console) as coordinator_config:
                _run(coordinator_config)
            return
        _run(config)


def retrain_command(
    config: Path = typer.Option(..., "--config", "-c", metavar="PATH", help="Run config (YAML)."),
) -> None:
    """Validate, train, evaluate and register the model a config describes."""
    with prefect_api_starting_early():
        _run(load_run_config(config))


def validate(config: Path = typer.Option(..., "--config", "-c", metavar="PATH", help="Run config (YAML).")) -> None:
    """Check every institution's extract; exit 1 when fewer than the quorum pass."""
    run_config, reports = validate_institutions(config)
    passed = sum(r.passed for r in reports)
    if passed < run_config.quorum:
        print_error(f"{passed} of {len(reports)} institutions passed; quorum is {run_config.quorum}")
        raise typer.Exit(ExitCode.FAILED)
    console.print(f"{passed} of {len(reports)} institutions passed; quorum {run_config.quorum} met")


def validate_institutions(config: Path):
    """The run config (its schema's committed suite confirmed current, else exit 2) and every institution's
    validation report, printed."""
    from flows.prefect_api import PrefectApiUnavailable
    from flows.validate import validate_consortium

    try:
        with prefect_api_starting_early():
            run_config = load_run_config(config)
            with prefect_api():
                reports = validate_consortium(run_config)
    except PrefectApiUnavailable as error:
        console.print(f"[red]Validation not run:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None
    print_validation(reports, {r.institution: r.data_docs for r in reports if r.data_docs})
    return run_config, reports
