"""Evaluation stage: each institution scores models on its own held-out split; only aggregates leave.

What leaves an institution per model: metric values, confusion counts at the decision threshold,
true/false positive rates at a fixed grid of score thresholds (its ROC curve), and per-bin counts
and sums for calibration; for the new model also its monitoring counts over the institution's development
rows (rows, predictions and defaults per grade, rows per feature bin), the reference later months are
compared with. None of these is a row or a single customer's score.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score, roc_curve

from contract.data import Extract, Split, labels, load_parts
from contract.schema import Schema
from institution.fairness import FairnessCounts, fairness_counts, with_proxies
from institution.monitoring import MonitoringCounts, monitoring_counts
from riskmodel import model as exported
from runconfig import EvaluationConfig

# How the card, the plots, the CLI and the Prefect summary name the roles and the metrics (one vocabulary).
ROLE_LABELS = {
    "challenger": "new model",
    "champion": "champion",
    "local_only": "local-only (simulation)",
    "pooled": "pooled data (simulation)",
}
METRIC_LABELS = {
    "roc_auc": "ROC AUC",
    "pr_auc": "PR AUC",
    "ks": "KS",
    "gini": "Gini",
    "log_loss": "log loss",
    "brier": "Brier",
    "ece": "ECE",
    "recall_at_fpr": "recall at FPR",
    "recall_at_alert_rate": "recall at alert rate",
}
HIGHER_IS_BETTER = {
    "roc_auc": True,
    "pr_auc": True,
    "ks": True,
    "gini": True,
    "log_loss": False,
    "brier": False,
    "ece": False,
    "recall_at_fpr": True,
    "recall_at_alert_rate": True,
}
# ROC curves are shared at fixed score thresholds, even in logit space so that the low
# probabilities of rare events (fraud, prime defaults) get as fine a grid as the middle.
ROC_THRESHOLDS = np.concatenate([[0.0], 1 / (1 + np.exp(-np.linspace(-9, 9, 181))), [1.0 + 1e-9]])
CALIBRATION_BINS = 10
FAIRNESS_ROLES = ("challenger", "champion")  # the models the fair-lending figures and guardrail compare


def _calibration(y: np.ndarray, p: np.ndarray) -> dict[str, list[float]]:
    """Per equal-width probability bin: examples, sum of predicted probabilities, positives."""
    bins = np.minimum((p * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    return {
        "examples": np.bincount(bins, minlength=CALIBRATION_BINS).astype(float).tolist(),
        "predicted_sum": np.bincount(bins, weights=p, minlength=CALIBRATION_BINS).tolist(),
        "positives": np.bincount(bins, weights=y, minlength=CALIBRATION_BINS).tolist(),
    }


def calibration_error(calibration: dict[str, list[float]]) -> float:
    """Expected calibration error: the example-weighted mean |mean predicted - observed rate| over bins."""
    examples = np.asarray(calibration["examples"])
    filled = examples > 0
    gap = np.abs(np.asarray(calibration["predicted_sum"])[filled] - np.asarray(calibration["positives"])[filled])
    return float(gap.sum() / examples.sum()) if examples.sum() else math.nan


def _roc_at_thresholds(y: np.ndarray, p: np.ndarray) -> dict[str, list[float]]:
    positives, negatives = max(y.sum(), 1.0), max(len(y) - y.sum(), 1.0)
    flagged = p[None, :] >= ROC_THRESHOLDS[:, None]
    return {"fpr": (flagged @ (1 - y) / negatives).tolist(), "tpr": (flagged @ y / positives).tolist()}


def recall_at_alert_rate(y: np.ndarray, p: np.ndarray, alert_rate: float) -> float:
    """Share of positives among the `alert_rate` share of rows with the highest scores (what a review
    team sees when it can look at that many), ties broken by row order."""
    flagged = np.argsort(-p, kind="stable")[: math.ceil(alert_rate * len(p))]
    return float(y[flagged].sum() / y.sum())


def binary_metrics(y: np.ndarray, p: np.ndarray, max_fpr: float = 0.05, alert_rate: float = 0.01) -> dict[str, float]:
    """Discrimination (ROC/PR AUC, KS, Gini, recall at `max_fpr` and at `alert_rate`) and calibration
    (log loss, Brier, ECE)."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    if len(np.unique(y)) < 2:
        auc = pr_auc = ks = recall = alerted = math.nan  # undefined with one class
    else:
        auc = float(roc_auc_score(y, p))
        pr_auc = float(average_precision_score(y, p))
        fpr, tpr, _ = roc_curve(y, p)
        ks = float(np.max(tpr - fpr))
        recall = float(np.max(tpr[fpr <= max_fpr]))
        alerted = recall_at_alert_rate(y, p, alert_rate)
    return {
        "roc_auc": auc,
        "pr_auc": pr_auc,
        "ks": ks,
        "gini": 2 * auc - 1,
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": calibration_error(_calibration(y, p)),
        "recall_at_fpr": recall,
        "recall_at_alert_rate": alerted,
    }


def confusion_counts(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, int]:
    """True/false positives and negatives when scores at or above `threshold` are flagged."""
    y, flagged = np.asarray(y) == 1, np.asarray(p) >= threshold
    return {
        "tp": int(np.sum(flagged & y)),
        "fp": int(np.sum(flagged & ~y)),
        "tn": int(np.sum(~flagged & ~y)),
        "fn": int(np.sum(~flagged & y)),
    }


@dataclass(frozen=True)
class InstitutionEvaluation:
    """What one institution reports about each model role ('challenger', 'champion', baselines)
    on its holdout: metrics, confusion counts, and curve aggregates (`roc`, `calibration`)."""

    institution: str
    examples: int
    positives: int
    metrics: dict[str, dict[str, float]]
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    curves: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    reference: MonitoringCounts | None = None  # the challenger's monitoring counts on all development rows
    # Per role (challenger, champion) its counts by protected group, score and outcome (schemas with protected
    # attributes): what the fair-lending figures and the promotion's fairness guardrail are computed from.
    fairness: dict[str, FairnessCounts] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, answer: dict) -> InstitutionEvaluation:
        """An evaluation as a node sent it (dataclasses.asdict of one)."""
        reference = answer.get("reference")
        fairness = {role: FairnessCounts.from_json(counts) for role, counts in (answer.get("fairness") or {}).items()}
        return cls(
            **{**answer, "reference": MonitoringCounts(**reference) if reference else None, "fairness": fairness}
        )


@functools.lru_cache(maxsize=16)
def _scorer(model_path: str):
    """A function raw rows -> probabilities for an exported model directory or a local MLflow model
    (a champion as downloaded from the registry)."""
    if exported.is_exported(Path(model_path)):
        model = exported.load(Path(model_path))
        return model.predict_proba
    import mlflow

    model = mlflow.pyfunc.load_model(model_path)
    inputs = model.metadata.get_input_schema().input_names()
    return lambda rows: np.asarray(model.predict(rows[inputs])).reshape(-1)


def evaluate_rows(
    extract: Extract, schema: Schema, split: Split, models: dict[str, str], evaluation: EvaluationConfig
) -> InstitutionEvaluation:
    """Score each model in `models` (role -> local model path) on this institution's raw holdout rows.
    Runs where the rows are; returns only metrics and curve aggregates."""
    parts = load_parts(extract, schema, split, ("train", "holdout"))
    holdout = parts["holdout"]
    y = labels(holdout, schema)
    scores = {role: _scorer(model)(holdout) for role, model in models.items()}
    reference = None
    if "challenger" in models and exported.is_exported(Path(models["challenger"])):
        # The development reference counts every development row (training and holdout): the later months'
        # stability and each grade's PD are read against it, and a small bank's holdout alone is too few rows.
        challenger = models["challenger"]
        development = pd.concat([parts["train"], holdout])
        probabilities = np.concatenate([_scorer(challenger)(parts["train"]), scores["challenger"]])
        bins = exported.load_manifest_bins(Path(challenger))
        reference = monitoring_counts(probabilities, development, bins, labels(development, schema))
    fairness = {
        role: fairness_counts(scores[role], holdout, y, schema, evaluation.threshold)
        for role in FAIRNESS_ROLES
        if role in scores and schema.protected
    }
    if fairness.get("challenger") is not None and reference is not None:  # the features' proxies, over development
        fairness["challenger"] = with_proxies(fairness["challenger"], development, bins, schema)
    return InstitutionEvaluation(
        institution=extract.institution,
        examples=int(len(y)),
        positives=int(y.sum()),
        metrics={
            role: binary_metrics(y, p, evaluation.max_false_positive_rate, evaluation.alert_rate)
            for role, p in scores.items()
        },
        confusion={role: confusion_counts(y, p, evaluation.threshold) for role, p in scores.items()},
        curves={
            role: {"roc": _roc_at_thresholds(y, p), "calibration": _calibration(y, p)} for role, p in scores.items()
        },
        reference=reference,
        fairness={role: counts for role, counts in fairness.items() if counts is not None},
    )


def weighted_metrics(evaluations: list[InstitutionEvaluation], role: str) -> dict[str, float]:
    """Example-weighted mean of each metric over the institutions that evaluated `role`."""
    having = [e for e in evaluations if role in e.metrics]
    total = sum(e.examples for e in having)
    names = having[0].metrics[role].keys()
    return {name: float(sum(e.examples * e.metrics[role][name] for e in having) / total) for name in names}


def pooled_confusion(evaluations: list[InstitutionEvaluation], role: str) -> dict[str, int]:
    """Confusion counts of `role` summed over institutions."""
    return {k: sum(e.confusion[role][k] for e in evaluations if role in e.confusion) for k in ("tp", "fp", "tn", "fn")}


def pooled_calibration(evaluations: list[InstitutionEvaluation], role: str) -> dict[str, list[float]]:
    """Calibration bins of `role` summed over institutions (the consortium's reliability curve)."""
    having = [e.curves[role]["calibration"] for e in evaluations if role in e.curves]
    return {
        key: np.sum([c[key] for c in having], axis=0).tolist() for key in ("examples", "predicted_sum", "positives")
    }


def pooled_ece(evaluations: list[InstitutionEvaluation], role: str = "challenger") -> float:
    """ECE over every institution's holdout rows together (what the promotion guardrail checks)."""
    return calibration_error(pooled_calibration(evaluations, role))
