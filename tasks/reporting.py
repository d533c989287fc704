"""Reporting: the Prefect artifact that tells a reader what one retraining did and why."""

from __future__ import annotations

import re

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.evaluation import InstitutionEvaluation, weighted_metrics
from tasks.registry import Registration
from tasks.validation import ValidationReport


def artifact_key(model_name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "retrain-" + re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")


def summary_markdown(
    model_name: str,
    validation: list[ValidationReport],
    evaluations: list[InstitutionEvaluation],
    registration: Registration | None,
    tracking_uri: str,
    failure: str | None = None,
) -> str:
    lines = [f"# Retraining of `{model_name}`", ""]
    if failure:
        lines += [f"**Failed:** {failure}", ""]
    lines += ["## Institutions", "", "| institution | status | rows | checks failed | reasons |", "|---|---|---|---|---|"]
    for r in validation:
        status = "admitted" if r.passed else "excluded"
        reasons = "<br>".join(r.reasons) if r.reasons else ""
        lines.append(f"| {r.institution} | {status} | {r.rows} | {r.checks_failed} | {reasons} |")
    if evaluations:
        lines += ["", "## Holdout metrics (challenger)", "",
                  "| institution | rows | ROC AUC | KS | log loss | Brier |", "|---|---|---|---|---|---|"]
        for e in evaluations:
            m = e.metrics["challenger"]
            lines.append(f"| {e.institution} | {e.examples} | {m['roc_auc']:.4f} | {m['ks']:.4f} | "
                         f"{m['log_loss']:.4f} | {m['brier']:.4f} |")
        w = weighted_metrics(evaluations, "challenger")
        lines.append(f"| **weighted** | {sum(e.examples for e in evaluations)} | {w['roc_auc']:.4f} | "
                     f"{w['ks']:.4f} | {w['log_loss']:.4f} | {w['brier']:.4f} |")
    if registration:
        lines += [
            "", "## Registration", "",
            f"- MLflow run `{registration.run_id}` (experiment {registration.experiment_id}, tracking `{tracking_uri}`)",
            f"- Model `{registration.model_name}` version **{registration.version}**, aliases: "
            f"{', '.join(registration.aliases)}",
            f"- Decision: {registration.reason}",
        ]
    return "\n".join(lines) + "\n"


@task(name="publish-summary")
def publish_summary(model_name: str, markdown: str) -> None:
    create_markdown_artifact(markdown=markdown, key=artifact_key(model_name),
                             description=f"Retraining summary for {model_name}")
