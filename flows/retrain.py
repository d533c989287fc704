"""The retraining flow: validate each institution -> federated statistics -> train -> evaluate -> register."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.config import RunConfig
from flows.settings import PROJECT_ROOT, Settings
from tasks.data import balanced_positive_weight, combine_statistics, compute_local_statistics
from tasks.evaluation import InstitutionEvaluation, evaluate_institution, weighted_metrics
from tasks.registry import Registration, find_champion, register_model
from tasks.reporting import publish_summary, summary_markdown
from tasks.training import TrainingOutcome, train_federated
from tasks.validation import QuorumNotMet, ValidationReport, admitted_institutions
from flows.validate import validate_consortium


@dataclass(frozen=True)
class RetrainSummary:
    model_name: str
    validation: list[ValidationReport]
    training: TrainingOutcome
    evaluations: list[InstitutionEvaluation]
    weighted: dict[str, float]
    registration: Registration


def git_commit() -> str:
    """The commit of the code that trains, with '-dirty' when the work tree has changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("-dirty" if dirty else "")


def run_key(config: RunConfig, admitted: list[ValidationReport], mean, std) -> str:
    """What decides the trained weights: training settings, data split, and each admitted extract's digest.

    A retraining with the same key resumes the checkpoints of an interrupted one.
    """
    decided_by = {
        "training": config.training.model_dump(mode="json"),
        "features": config.features, "label": config.label, "seed": config.seed,
        "holdout_fraction": config.holdout_fraction,
        "extracts": {r.institution: r.digest for r in admitted},
        "mean": [float(m) for m in mean], "std": [float(s) for s in std],
    }
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:16]


@flow(name="retrain", flow_run_name="retrain-{config.model_name}")
def retrain(config: RunConfig) -> RetrainSummary:
    """Retrain `config.model_name` on the institutions that pass validation, and register it."""
    settings = Settings()
    features, label = config.features, config.label
    split = dict(holdout_fraction=config.holdout_fraction, seed=config.seed)
    sources = {i.name: (i.name, i.path, i.columns) for i in config.institutions}

    validation = validate_consortium(config)
    try:
        admitted = [sources[name] for name in admitted_institutions(validation, config.quorum, config.quorum_row_share)]
    except QuorumNotMet as error:
        publish_summary(config.model_name, summary_markdown(
            config.model_name, validation, [], None, settings.mlflow_tracking_uri, failure=str(error)))
        raise

    with tempfile.TemporaryDirectory(prefix="fedrisk-") as work_dir:
        # The registry is consulted before training so an unreachable one costs no training.
        champion = find_champion(settings.mlflow_tracking_uri, config.model_name, Path(work_dir))
        statistics = [compute_local_statistics(*source, features, label, **split) for source in admitted]
        mean, std = combine_statistics(statistics)
        weighting = config.training.positive_class_weight
        positive_weight = balanced_positive_weight(statistics) if weighting == "balanced" else float(weighting)
        reports = [r for r in validation if r.institution in {s[0] for s in admitted}]
        run_dir = settings.runs_dir / config.model_name / run_key(config, reports, mean, std)
        training = train_federated(
            admitted, features, label, mean=mean.tolist(), std=std.tolist(),
            training=config.training.model_dump(mode="json"), positive_class_weight=positive_weight,
            validation_fraction=config.training.validation_fraction,
            model_path=run_dir / "model.keras", checkpoint_dir=run_dir / "checkpoints", **split,
        )
        models = {"challenger": training.model_path}
        if champion is not None and champion.features == features:
            models["champion"] = champion.path
        evaluations = [evaluate_institution(*source, features, label, models=models, **split) for source in admitted]
        registration = register_model(
            settings.mlflow_tracking_uri,
            config.model_name,
            training.model_path,
            features,
            feature_means=mean.tolist(),
            params=config.model_dump(mode="json"),
            training=asdict(training),
            evaluations=evaluations,
            validation=validation,
            promotion_metric=config.promotion_metric,
            champion_version=champion.version if champion else None,
            tags={"prefect.flow_run_id": str(flow_run.id), "git.commit": git_commit(),
                  "fedrisk.suite": config.suite, "fedrisk.institutions": ",".join(s[0] for s in admitted)},
        )
    shutil.rmtree(run_dir, ignore_errors=True)  # registered: nothing left to resume
    publish_summary(config.model_name, summary_markdown(
        config.model_name, validation, evaluations, registration, settings.mlflow_tracking_uri, training=training))
    return RetrainSummary(
        model_name=config.model_name,
        validation=validation,
        training=training,
        evaluations=evaluations,
        weighted=weighted_metrics(evaluations, "challenger"),
        registration=registration,
    )
