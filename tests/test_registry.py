import math

import pytest

from tasks.registry import decide_promotion


@pytest.mark.parametrize(
    "metric, challenger, champion, version, promoted, reason",
    [
        ("roc_auc", 0.75, None, None, True, "no champion yet: promoted with roc_auc 0.7500"),
        ("roc_auc", 0.76, 0.75, "3", True, "roc_auc 0.7600 vs champion v3 0.7500 on the same holdouts: better, promoted"),
        ("roc_auc", 0.75, 0.75, "3", False, "roc_auc 0.7500 vs champion v3 0.7500 on the same holdouts: not better, champion kept"),
        ("log_loss", 0.40, 0.42, "1", True, "log_loss 0.4000 vs champion v1 0.4200 on the same holdouts: better, promoted"),
        ("brier", 0.13, 0.12, "1", False, "brier 0.1300 vs champion v1 0.1200 on the same holdouts: not better, champion kept"),
        ("roc_auc", 0.8, None, "2", False, "champion v2 could not be compared on the same data; champion kept"),
        ("ks", math.nan, 0.3, "2", False, "challenger ks is undefined; champion v2 kept"),
    ],
)
def test_promotion_decision(metric, challenger, champion, version, promoted, reason):
    assert decide_promotion(metric, challenger, champion, version) == (promoted, reason)
