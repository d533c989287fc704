"""Evaluation stage: each institution scores models on its own held-out split; only metrics leave."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import task
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score, roc_curve

from tasks.data import load_part

HIGHER_IS_BETTER = {"roc_auc": True, "ks": True, "log_loss": False, "brier": False}


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, KS statistic, log loss and Brier score of probabilities `p` for labels `y`."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    if len(np.unique(y)) < 2:
        auc = ks = math.nan  # undefined with one class
    else:
        auc = float(roc_auc_score(y, p))
        fpr, tpr, _ = roc_curve(y, p)
        ks = float(np.max(tpr - fpr))
    return {
        "roc_auc": auc,
        "ks": ks,
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
    }


@dataclass(frozen=True)
class InstitutionEvaluation:
    """Metrics of each model role ('challenger', 'champion') on one institution's holdout."""

    institution: str
    examples: int
    positives: int
    metrics: dict[str, dict[str, float]]


@functools.lru_cache(maxsize=8)
def _scorer(model_path: str):
    """A function rows -> probabilities for a saved .keras file or a local MLflow model directory."""
    if (Path(model_path) / "MLmodel").exists():
        import mlflow

        model = mlflow.pyfunc.load_model(model_path)
        return lambda rows: np.asarray(model.predict(rows)).reshape(-1)
    from fed_models.keras_models import load_model, predict_proba

    keras_model = load_model(Path(model_path))
    return lambda rows: predict_proba(keras_model, rows.to_numpy(dtype=np.float32))


@task(name="evaluate-institution", task_run_name="evaluate-{institution}")
def evaluate_institution(
    institution: str,
    path: Path,
    columns: dict[str, str] | None,
    features: list[str],
    label: str,
    holdout_fraction: float,
    seed: int,
    models: dict[str, str],
) -> InstitutionEvaluation:
    """Score each model in `models` (role -> local model path) on this institution's raw holdout rows."""
    holdout = load_part(institution, path, columns, label, part="holdout",
                        holdout_fraction=holdout_fraction, seed=seed)
    y = holdout[label].to_numpy(dtype=float)
    return InstitutionEvaluation(
        institution=institution,
        examples=int(len(y)),
        positives=int(y.sum()),
        metrics={role: binary_metrics(y, _scorer(model)(holdout[features])) for role, model in models.items()},
    )


def weighted_metrics(evaluations: list[InstitutionEvaluation], role: str) -> dict[str, float]:
    """Example-weighted mean of each metric over institutions (nan where an institution has none)."""
    total = sum(e.examples for e in evaluations)
    names = evaluations[0].metrics[role].keys()
    return {
        name: float(sum(e.examples * e.metrics[role][name] for e in evaluations) / total) for name in names
    }
