import math

import numpy as np
import pytest

from tasks.evaluation import InstitutionEvaluation, binary_metrics, weighted_metrics


def test_metrics_on_a_hand_checked_case():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    m = binary_metrics(y, p)
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["ks"] == pytest.approx(0.5)
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    assert m["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.4) + math.log(0.9)) / 4)


def test_perfect_and_single_class():
    assert binary_metrics(np.array([0, 1]), np.array([0.2, 0.8]))["ks"] == pytest.approx(1.0)
    single = binary_metrics(np.array([1, 1]), np.array([0.2, 0.8]))
    assert math.isnan(single["roc_auc"]) and math.isnan(single["ks"])


def test_weighted_mean_weights_by_holdout_rows():
    evaluations = [
        InstitutionEvaluation("a", 300, 60, {"challenger": {"roc_auc": 0.7, "ks": 0.3}}),
        InstitutionEvaluation("b", 100, 20, {"challenger": {"roc_auc": 0.9, "ks": 0.5}}),
    ]
    assert weighted_metrics(evaluations, "challenger") == pytest.approx({"roc_auc": 0.75, "ks": 0.35})
