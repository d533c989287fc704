"""Registry stage: track one retraining in MLflow, register its model, move the aliases.

Promotion is all-or-nothing: if anything fails after the model version exists, the version is
deleted again and the champion alias is left where it was.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from prefect import task

from tasks.evaluation import HIGHER_IS_BETTER, InstitutionEvaluation, weighted_metrics
from tasks.validation import ValidationReport

CHAMPION = "champion"
CHALLENGER = "challenger"
PROFILES_ARTIFACT = "validation/profiles.json"
PROFILES_TAG = "fedrisk.profiles"
SCORING_MODEL = str(Path(__file__).with_name("scoring_model.py"))


@dataclass(frozen=True)
class Champion:
    """The current champion: its version, the features it scores, and a local copy of it."""

    version: str
    features: list[str]
    path: str


@dataclass(frozen=True)
class Registration:
    run_id: str
    experiment_id: str
    model_name: str
    version: str
    aliases: list[str]
    promoted: bool
    reason: str


def experiment_name(model_name: str) -> str:
    return f"fedrisk-{model_name}"


def use_tracking(tracking_uri: str, model_name: str) -> str:
    """Point MLflow at `tracking_uri`; return the model's experiment id (created on first use).

    With a sqlite store, artifacts go to `artifacts/` beside the database as an absolute
    location, so runs and models resolve from any working directory.
    """
    import mlflow

    parsed = urlparse(tracking_uri)
    artifact_location = None
    if parsed.scheme == "sqlite":
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        artifact_location = (database.parent / "artifacts").resolve().as_uri()
    mlflow.set_tracking_uri(tracking_uri)
    name = experiment_name(model_name)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location)


@task(name="find-champion")
def find_champion(tracking_uri: str, model_name: str, download_dir: Path) -> Champion | None:
    """The version holding the champion alias, downloaded to `download_dir`, or None.

    A local copy is what each institution scores on its holdout (and what a remote
    institution would be sent), so evaluation never depends on registry access.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    use_tracking(tracking_uri, model_name)
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION).version
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    uri = f"models:/{model_name}/{version}"
    signature = mlflow.models.get_model_info(uri).signature
    path = mlflow.artifacts.download_artifacts(uri, dst_path=str(Path(download_dir) / f"champion-v{version}"))
    return Champion(version=str(version), features=list(signature.inputs.input_names()), path=path)


@task(name="find-reference-profiles")
def find_reference_profiles(tracking_uri: str, model_name: str, lookback: int = 50) -> dict[str, dict]:
    """Each institution's extract profile from the latest registered retraining that admitted it."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(experiment_name(model_name))
    if experiment is None:
        return {}
    runs = mlflow.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{PROFILES_TAG}` = 'logged'",
        order_by=["attributes.start_time DESC"],
        max_results=lookback,
        output_format="list",
    )
    found: dict[str, dict] = {}
    for run in runs:
        for institution, profile in mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{PROFILES_ARTIFACT}").items():
            found.setdefault(institution, profile)
    return found


def decide_promotion(
    metric: str, challenger: float, champion: float | None, champion_version: str | None
) -> tuple[bool, str]:
    """Whether the challenger becomes champion on `metric`, and why (one sentence)."""
    if champion_version is None:
        return True, f"no champion yet: promoted with {metric} {challenger:.4f}"
    if champion is None:
        return False, f"champion v{champion_version} could not be compared on the same data; champion kept"
    if math.isnan(challenger):
        return False, f"challenger {metric} is undefined; champion v{champion_version} kept"
    better = challenger > champion if HIGHER_IS_BETTER[metric] else challenger < champion
    comparison = f"{metric} {challenger:.4f} vs champion v{champion_version} {champion:.4f} on the same holdouts"
    if better:
        return True, f"{comparison}: better, promoted"
    return False, f"{comparison}: not better, champion kept"


def _flatten(prefix: str, value) -> dict[str, str]:
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(_flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return flat
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        flat = {}
        for item in value:
            name = item.get("name", str(len(flat)))
            flat.update(_flatten(f"{prefix}.{name}", {k: v for k, v in item.items() if k != "name"}))
        return flat
    return {prefix: json.dumps(value) if isinstance(value, list) else str(value)}


# Per-round metric names in MLflow (step = round).
ROUND_METRICS = {
    "loss": "train_loss", "auc": "train_auc", "validation_loss": "validation_loss",
    "validation_auc": "validation_auc", "client_update_norm": "client_update_norm",
    "server_update_norm": "server_update_norm", "non_finite_updates": "non_finite_updates",
    "bytes_sent": "bytes_sent", "institutions": "institutions", "num_examples": "train_examples",
}


def _convergence_figure(rounds: list[dict], best_round: int):
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display

    figure = Figure(figsize=(15, 4))
    loss_axis, auc_axis, norm_axis = figure.subplots(1, 3)
    steps = [r["round"] for r in rounds]
    for axis, key, title, ylabel in ((loss_axis, "loss", "Loss", "weighted binary cross-entropy"),
                                     (auc_axis, "auc", "ROC AUC", "ROC AUC")):
        axis.plot(steps, [r[key] for r in rounds], marker=".", label="training (sampled institutions)")
        axis.plot(steps, [r[f"validation_{key}"] for r in rounds], marker=".", label="federated validation")
        axis.axvline(best_round, color="grey", linestyle="--", label=f"exported: round {best_round}")
        axis.set(title=title, xlabel="round", ylabel=ylabel)
        axis.legend()
    norm_axis.plot(steps, [r["client_update_norm"] for r in rounds], marker=".", label="mean client update")
    norm_axis.plot(steps, [r["server_update_norm"] for r in rounds], marker=".", label="aggregated update")
    norm_axis.set(title="Update L2 norm", xlabel="round", ylabel="L2 norm", yscale="log")
    norm_axis.legend()
    figure.tight_layout()
    return figure


def _log_institution_input(report: ValidationReport) -> None:
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class InstitutionExtract(MetaDataset):
        """An institution's extract as metadata only: name, source, digest and row count."""

        @property
        def profile(self):
            return {"num_rows": report.rows}

    with warnings.catch_warnings():  # a local path matches two equivalent local source types
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(report.path)
    dataset = InstitutionExtract(source, name=report.institution, digest=report.digest)
    mlflow.log_input(dataset, context="training", tags={"institution": report.institution})


@task(name="register-model")
def register_model(
    tracking_uri: str,
    model_name: str,
    model_path: str,
    features: list[str],
    feature_means: list[float],
    params: dict,
    training: dict,
    evaluations: list[InstitutionEvaluation],
    validation: list[ValidationReport],
    promotion_metric: str,
    champion_version: str | None,
    tags: dict[str, str],
) -> Registration:
    """Log the retraining as one MLflow run, register its model, set challenger (and champion if better)."""
    import mlflow
    import tensorflow as tf
    from mlflow.models import ModelSignature
    import numpy as np
    import pandas as pd
    from mlflow.types import ColSpec, DataType, Schema

    experiment_id = use_tracking(tracking_uri, model_name)
    client = mlflow.MlflowClient()
    challenger_metrics = weighted_metrics(evaluations, "challenger")
    has_champion = all("champion" in e.metrics for e in evaluations) and champion_version is not None
    champion_metrics = weighted_metrics(evaluations, "champion") if has_champion else None
    promoted, reason = decide_promotion(
        promotion_metric,
        challenger_metrics[promotion_metric],
        champion_metrics[promotion_metric] if champion_metrics else None,
        champion_version,
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"retrain-{model_name}", tags=tags) as run:
        mlflow.log_params(_flatten("", params))
        for r in training["rounds"]:
            mlflow.log_metrics({name: float(r[key]) for key, name in ROUND_METRICS.items()}, step=r["round"])
        mlflow.log_metrics({"rounds_run": len(training["rounds"]), "best_round": training["best_round"],
                            "resumed_from_round": training["resumed_from_round"],
                            "positive_class_weight": training["positive_class_weight"]})
        mlflow.set_tag("training.stopped_early", str(training["stopped_early"]).lower())
        for evaluation in evaluations:
            for role, metrics in evaluation.metrics.items():
                mlflow.log_metrics({f"{role}.{evaluation.institution}.{k}": v for k, v in metrics.items()})
            mlflow.log_metric(f"holdout_rows.{evaluation.institution}", evaluation.examples)
        mlflow.log_metrics({f"challenger.weighted.{k}": v for k, v in challenger_metrics.items()})
        if champion_metrics:
            mlflow.log_metrics({f"champion.weighted.{k}": v for k, v in champion_metrics.items()})
        for report in validation:
            if report.passed:
                _log_institution_input(report)
        mlflow.log_dict({"reports": [asdict(r) for r in validation]}, "validation/summary.json")
        mlflow.log_dict({r.institution: r.profile for r in validation if r.passed}, PROFILES_ARTIFACT)
        for report in validation:
            if report.data_docs and Path(report.data_docs).exists():
                mlflow.log_artifact(report.data_docs, f"validation/data_docs/{report.institution}")
        mlflow.log_figure(_convergence_figure(training["rounds"], training["best_round"]), "plots/convergence.png")
        signature = ModelSignature(
            # The schema's columns are integer-valued (NT$ amounts, codes); raw extracts load as int64.
            inputs=Schema([ColSpec(DataType.long, name) for name in features]),
            outputs=Schema([ColSpec(DataType.float, "default_probability")]),
        )
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=SCORING_MODEL,
            artifacts={"keras_model": str(model_path)},
            model_config={"feature_order": features},
            # The federated mean is an aggregate, so it may serve as the example; no customer row does.
            input_example=pd.DataFrame([np.round(feature_means)], columns=features).astype("int64"),
            signature=signature,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"mlflow=={mlflow.__version__}",
                              f"pandas=={pd.__version__}", f"numpy=={np.__version__}"],
        )
        version = mlflow.register_model(info.model_uri, model_name, tags=tags).version
        try:
            client.set_registered_model_alias(model_name, CHALLENGER, version)
            aliases = [CHALLENGER]
            if promoted:
                client.set_registered_model_alias(model_name, CHAMPION, version)
                aliases.append(CHAMPION)
            for key, value in {"promotion.metric": promotion_metric, "promotion.decision":
                               "promoted" if promoted else "not promoted", "promotion.reason": reason}.items():
                client.set_model_version_tag(model_name, version, key, value)
            mlflow.set_tags({"promotion.decision": "promoted" if promoted else "not promoted",
                             "promotion.reason": reason, "model.version": version, PROFILES_TAG: "logged"})
        except Exception:
            client.delete_model_version(model_name, version)
            raise
    return Registration(
        run_id=run.info.run_id,
        experiment_id=experiment_id,
        model_name=model_name,
        version=str(version),
        aliases=aliases,
        promoted=promoted,
        reason=reason,
    )
