"""Reporting: the Prefect artifact that tells a reader what one retraining did and why."""

from __future__ import annotations

import re

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from engines.base import TrainingOutcome
from engines.privacy import privacy_sentence
from institution.evaluation import METRIC_LABELS, ROLE_LABELS, InstitutionEvaluation, weighted_metrics
from institution.validation import ValidationReport
from tasks.retries import TRANSIENT_RETRIES
from tracking.fairness import consortium_fairness
from tracking.registry import Registration
from tracking.versions import MODEL_CARD_ARTIFACT, run_page_url, validation_page_artifact, version_page_url


def artifact_key(kind: str, model_name: str) -> str:
    """`kind-model-name`: Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return f"{kind}-" + re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")


def training_sentence(training: TrainingOutcome) -> str:
    """How training went, in one sentence: rounds, why it ended, which round was exported, resume."""
    trained, limit = len(training.rounds), training.max_rounds
    if training.stopped_early:
        how = f"stopped early, before the limit of {limit}: validation loss stopped improving"
    else:
        how = f"the limit of {limit} rounds reached" if limit else "maximum rounds reached"
    resumed = (
        f"; resumed from the checkpoint of round {training.resumed_from_round}" if training.resumed_from_round else ""
    )
    return (
        f"Trained {trained} rounds ({how}); exported round {training.best_round}, the best by "
        f"federated validation loss{resumed}"
    )


def summary_markdown(
    model_name: str,
    validation: list[ValidationReport],
    evaluations: list[InstitutionEvaluation],
    registration: Registration | None,
    mlflow_ui_url: str,
    failure: str | None = None,
    training: TrainingOutcome | None = None,
    privacy=None,
    protected: dict[str, str] | None = None,
    fairness: dict | None = None,
) -> str:
    """The retraining's story for the Prefect UI: institutions, training, metrics, fair lending (`protected`: the
    schema's protected attributes and their reference groups; `fairness`: the summed counts per role), the decision
    and its checks, with links to the MLflow run and model version (`mlflow_ui_url` is where `mlflow ui` serves)."""
    lines = [f"# Retraining of `{model_name}`", ""]
    if failure:
        lines += [f"**Failed:** {failure}", ""]
    rows = validation_rows(validation)
    pages = validation_page_urls(mlflow_ui_url, registration, validation)
    lines += [
        "## Institutions",
        "",
        "| " + " | ".join([*rows[0], "checks page"]) + " |",
        "|---" * (len(rows[0]) + 1) + "|",
    ]
    for row in rows:
        page = pages.get(row["institution"])
        # Without a registered run, the page stays with the institution's validation (`fedrisk validate`).
        cells = [*row.values(), f"[checks]({page})" if page else "-"]
        lines.append("| " + " | ".join(str(v).replace("; ", "<br>") for v in cells) + " |")
    if training:
        lines += ["", "## Training", "", training_sentence(training) + ".", "", privacy_sentence(privacy) + "."]
    if evaluations:
        names = ("roc_auc", "pr_auc", "ks", "log_loss", "brier", "ece", "recall_at_fpr")
        lines += [
            "",
            "## Holdout metrics",
            "",
            "| institution | model | rows | " + " | ".join(METRIC_LABELS[n] for n in names) + " |",
            "|---" * (len(names) + 3) + "|",
        ]
        for e in evaluations:
            for role, m in e.metrics.items():
                lines.append(
                    f"| {e.institution} | {ROLE_LABELS.get(role, role)} | {e.examples:,} | "
                    + " | ".join(f"{m[n]:.4f}" for n in names)
                    + " |"
                )
        for role in dict.fromkeys(role for e in evaluations for role in e.metrics):
            w = weighted_metrics(evaluations, role)
            lines.append(
                f"| **weighted** | {ROLE_LABELS.get(role, role)} | "
                f"{sum(e.examples for e in evaluations if role in e.metrics):,} | "
                + " | ".join(f"{w[n]:.4f}" for n in names)
                + " |"
            )
    fair = consortium_fairness(fairness or {}, protected or {})
    if fair:
        lines += [
            "",
            "## Fair lending (new model, every holdout)",
            "",
            "| attribute | group | rows | approval rate | adverse impact ratio | approval among goods | AUC |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for attribute in fair:
            for g in attribute.groups:
                reference = " (reference)" if g.group == attribute.reference else ""
                lines.append(
                    f"| {attribute.attribute} | {g.group}{reference} | {g.rows:,} | {g.approval_rate:.3f} | "
                    f"{g.adverse_impact_ratio:.3f} | {g.equal_opportunity:.3f} | {g.auc:.3f} |"
                )
    if registration:
        run = (registration.experiment_id, registration.run_id)
        lines += [
            "",
            "## Registration",
            "",
            f"- MLflow run [{registration.run_id}]({run_page_url(mlflow_ui_url, *run)}), "
            f"[model card]({run_page_url(mlflow_ui_url, *run, MODEL_CARD_ARTIFACT)})",
            f"- Model `{registration.model_name}` [version {registration.version}]("
            f"{version_page_url(mlflow_ui_url, registration.model_name, registration.version)}), aliases: "
            f"{', '.join(registration.aliases)}",
            f"- Decision: {registration.reason}",
            *[f"  - {check}" for check in registration.checks],
        ]
    return "\n".join(lines) + "\n"


def validation_page_urls(
    mlflow_ui_url: str, registration: Registration | None, reports: list[ValidationReport]
) -> dict[str, str]:
    """Each institution's validation page, as the registered run keeps it, in the MLflow UI."""
    if registration is None:
        return {}
    return {
        r.institution: run_page_url(
            mlflow_ui_url, registration.experiment_id, registration.run_id, validation_page_artifact(r.institution)
        )
        for r in reports
        if r.data_docs
    }


def validation_rows(reports: list[ValidationReport]) -> list[dict]:
    """One row per institution, as the Prefect table artifact and the CLI show it."""
    return [
        {
            "institution": r.institution,
            "rows": r.rows,
            "checks passed": r.checks_evaluated - r.checks_failed,
            "checks failed": r.checks_failed,
            "status": "admitted" if r.passed else "quarantined",
            "reasons": "; ".join(r.reasons),
            "warnings": "; ".join(r.warnings),
        }
        for r in reports
    ]


@task(name="publish-validation-table", task_run_name="publish-validation-table", **TRANSIENT_RETRIES)
def publish_validation_table(model_name: str, reports: list[ValidationReport]) -> None:
    create_table_artifact(
        table=validation_rows(reports),
        key=artifact_key("validation", model_name),
        description=f"Data-quality checks per institution for {model_name}",
    )


@task(name="publish-summary", task_run_name="publish-summary", **TRANSIENT_RETRIES)
def publish_summary(model_name: str, markdown: str) -> None:
    create_markdown_artifact(
        markdown=markdown, key=artifact_key("retrain", model_name), description=f"Retraining summary for {model_name}"
    )


@task(name="publish-monitoring", task_run_name="publish-monitoring", **TRANSIENT_RETRIES)
def publish_monitoring(model_name: str, markdown: str) -> None:
    """The monitoring report as the flow run's Markdown artifact, under one key per model (a series in the UI)."""
    create_markdown_artifact(
        markdown=markdown, key=artifact_key("monitor", model_name), description=f"Monitoring of {model_name}"
    )
