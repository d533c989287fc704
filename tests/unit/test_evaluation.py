import math

import numpy as np
import pytest

from institution.evaluation import (
    InstitutionEvaluation,
    binary_metrics,
    calibration_error,
    confusion_counts,
    pooled_calibration,
    pooled_confusion,
    weighted_metrics,
)


def test_metrics_on_a_hand_checked_case():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    m = binary_metrics(y, p, max_fpr=0.5)
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["gini"] == pytest.approx(0.5)
    assert m["ks"] == pytest.approx(0.5)
    # Ranked 0.9 (pos), 0.6 (neg), 0.4 (pos), 0.1: precision 1 at recall 0.5, 2/3 at recall 1.
    assert m["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # At most half the negatives flagged (threshold 0.4): both defaults caught.
    assert m["recall_at_fpr"] == pytest.approx(1.0)
    assert binary_metrics(y, p, max_fpr=0.4)["recall_at_fpr"] == pytest.approx(0.5)
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    assert m["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.4) + math.log(0.9)) / 4)
    # Bins [0.1) 0.1->0, [0.4) 0.4->1, [0.6) 0.6->0, [0.9) 0.9->1: |0.1|+|0.6|+|0.6|+|0.1| over 4.
    assert m["ece"] == pytest.approx((0.1 + 0.6 + 0.6 + 0.1) / 4)


def test_calibration_error_of_a_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(float)
    assert binary_metrics(y, p)["ece"] < 0.01
    assert binary_metrics(y, np.where(p > 0.5, 0.99, 0.01))["ece"] > 0.2


def test_confusion_counts_flag_scores_at_or_above_the_threshold():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.2, 0.5, 0.5, 0.9, 0.1])
    assert confusion_counts(y, p, 0.5) == {"tp": 2, "fp": 1, "tn": 1, "fn": 1}


def test_perfect_and_single_class():
    assert binary_metrics(np.array([0, 1]), np.array([0.2, 0.8]))["ks"] == pytest.approx(1.0)
    single = binary_metrics(np.array([1, 1]), np.array([0.2, 0.8]))
    assert all(math.isnan(single[m]) for m in ("roc_auc", "pr_auc", "ks", "gini", "recall_at_fpr"))


def test_weighted_mean_weights_by_holdout_rows():
    evaluations = [
        InstitutionEvaluation("a", 300, 60, {"challenger": {"roc_auc": 0.7, "ks": 0.3}}),
        InstitutionEvaluation("b", 100, 20, {"challenger": {"roc_auc": 0.9, "ks": 0.5}}),
    ]
    assert weighted_metrics(evaluations, "challenger") == pytest.approx({"roc_auc": 0.75, "ks": 0.35})


def test_pooled_calibration_and_confusion_equal_those_of_the_pooled_rows():
    """Summing what institutions report gives exactly what pooling their rows would."""
    from institution.evaluation import _calibration

    rng = np.random.default_rng(1)
    parts = [(rng.integers(0, 2, n).astype(float), rng.uniform(0, 1, n)) for n in (500, 120, 37)]
    evaluations = [
        InstitutionEvaluation(
            str(i),
            len(y),
            int(y.sum()),
            {"challenger": {}},
            confusion={"challenger": confusion_counts(y, p, 0.3)},
            curves={"challenger": {"calibration": _calibration(y, p)}},
        )
        for i, (y, p) in enumerate(parts)
    ]
    y_all, p_all = np.concatenate([y for y, _ in parts]), np.concatenate([p for _, p in parts])
    assert pooled_confusion(evaluations, "challenger") == confusion_counts(y_all, p_all, 0.3)
    assert calibration_error(pooled_calibration(evaluations, "challenger")) == pytest.approx(
        binary_metrics(y_all, p_all)["ece"]
    )
