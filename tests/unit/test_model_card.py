"""tracking.model_card: how the card writes figures and the policy for a reader."""

from runconfig import PromotionConfig
from tracking.model_card import _points, _policy


def test_points_round_to_two_decimals_and_zero_has_no_sign():
    assert [_points(v) for v in (12.345, -3.2, -0.001, -0.0, 0.004)] == ["12.35", "-3.20", "0.00", "0.00", "0.00"]


def test_the_policy_is_words_not_a_python_dict():
    policy = _policy(PromotionConfig(metric="roc_auc", max_calibration_error=None))
    assert policy.startswith("metric roc_auc, min improvement ") and "max calibration error none" in policy
    assert "{" not in policy and "'" not in policy
