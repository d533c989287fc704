"""tracking.promotion: the promotion policy on hand-made holdout evaluations."""

import math

import pytest

from institution.evaluation import InstitutionEvaluation
from runconfig import PromotionConfig
from tracking.fairness import summed_fairness
from tracking.promotion import decide_promotion

POLICY = {"metric": "roc_auc", "min_improvement": 0.0, "max_institution_drop": 0.01, "max_calibration_error": 0.05}


def _evaluations(
    challenger: dict[str, float], champion: dict[str, float] | None = None, ece: float = 0.02, metric: str = "roc_auc"
) -> list[InstitutionEvaluation]:
    """Institutions of 100 holdout rows each; calibration bins whose pooled ECE is `ece`."""
    evaluations = []
    for name, value in challenger.items():
        metrics = {"challenger": {metric: value}}
        if champion is not None:
            metrics["champion"] = {metric: champion[name]}
        calibration = {"examples": [100.0], "predicted_sum": [20.0 + 100 * ece], "positives": [20.0]}
        evaluations.append(
            InstitutionEvaluation(name, 100, 20, metrics, curves={"challenger": {"calibration": calibration}})
        )
    return evaluations


def test_first_model_is_promoted_when_calibrated():
    decision = decide_promotion(PromotionConfig(**POLICY), _evaluations({"a": 0.75, "b": 0.77}), None)
    assert decision.promoted
    assert decision.checks == ["pass: no champion yet; challenger roc_auc 0.7600", "pass: pooled ECE 0.0200 below 0.05"]
    assert decision.reason == "promoted: no champion yet; challenger roc_auc 0.7600"


def test_first_model_that_is_badly_calibrated_is_not_made_champion():
    decision = decide_promotion(PromotionConfig(**POLICY), _evaluations({"a": 0.75}, ece=0.08), None)
    assert not decision.promoted
    assert decision.reason == "not promoted, no champion set: pooled ECE 0.0800 not below 0.05"


def test_better_on_average_but_worse_for_one_institution_is_refused():
    decision = decide_promotion(
        PromotionConfig(**POLICY), _evaluations({"a": 0.80, "b": 0.70}, {"a": 0.74, "b": 0.72}), "3"
    )
    assert not decision.promoted
    assert decision.checks[0] == (
        "pass: roc_auc 0.7500 vs champion v3 0.7300 on the same holdouts (+0.0200; needs > 0)"
    )
    assert decision.checks[2] == (
        "fail: institutions worse than under the champion by more than 0.01 on roc_auc: b worse by 0.0200"
    )
    assert decision.reason == (
        "champion v3 kept: institutions worse than under the champion by more than 0.01 on roc_auc: b worse by 0.0200"
    )


def test_promoted_when_better_everywhere_within_the_guardrails():
    decision = decide_promotion(
        PromotionConfig(**POLICY), _evaluations({"a": 0.76, "b": 0.715}, {"a": 0.74, "b": 0.72}), "3"
    )
    assert decision.promoted
    assert decision.checks == [
        "pass: roc_auc 0.7375 vs champion v3 0.7300 on the same holdouts (+0.0075; needs > 0)",
        "pass: pooled ECE 0.0200 below 0.05",
        "pass: no institution worse than under the champion by more than 0.01 on roc_auc (largest drop: b 0.0050)",
    ]


@pytest.mark.parametrize(
    "policy, challenger, champion, promoted, first_check",
    [
        (
            {"min_improvement": 0.01},
            0.745,
            0.74,
            False,
            "fail: roc_auc 0.7450 vs champion v1 0.7400 on the same holdouts (+0.0050; needs > 0 and >= 0.01)",
        ),
        (
            {"min_improvement": 0.01},
            0.755,
            0.74,
            True,
            "pass: roc_auc 0.7550 vs champion v1 0.7400 on the same holdouts (+0.0150; needs > 0 and >= 0.01)",
        ),
        ({}, 0.74, 0.74, False, "fail: roc_auc 0.7400 vs champion v1 0.7400 on the same holdouts (+0.0000; needs > 0)"),
        (
            {"metric": "log_loss"},
            0.40,
            0.42,
            True,
            "pass: log_loss 0.4000 vs champion v1 0.4200 on the same holdouts (+0.0200; needs > 0)",
        ),
        (
            {"metric": "brier"},
            0.13,
            0.12,
            False,
            "fail: brier 0.1300 vs champion v1 0.1200 on the same holdouts (-0.0100; needs > 0)",
        ),
        ({"metric": "ks"}, math.nan, 0.3, False, "fail: challenger ks is undefined"),
    ],
)
def test_primary_metric_and_minimum_improvement(policy, challenger, champion, promoted, first_check):
    policy = {**POLICY, "max_institution_drop": None, **policy}
    metric = policy["metric"]
    decision = decide_promotion(
        PromotionConfig(**policy), _evaluations({"a": challenger}, {"a": champion}, metric=metric), "1"
    )
    assert decision.promoted is promoted
    assert decision.checks[0] == first_check


def test_a_champion_that_could_not_be_scored_is_kept():
    decision = decide_promotion(PromotionConfig(**POLICY), _evaluations({"a": 0.9}), "2")
    assert not decision.promoted
    assert (
        decision.reason == "champion v2 kept: champion v2 could not be compared on the same data (its features differ)"
    )


def test_guardrails_can_be_turned_off():
    policy = {**POLICY, "max_institution_drop": None, "max_calibration_error": None}
    decision = decide_promotion(
        PromotionConfig(**policy), _evaluations({"a": 0.9, "b": 0.5}, {"a": 0.6, "b": 0.7}, ece=0.3), "1"
    )
    assert decision.promoted and len(decision.checks) == 1


def test_a_challenger_trained_without_an_institution_lost_mid_training_is_not_promoted_by_default():
    lost = {
        "c": "left out from round 3: institution 'c': unreachable at 10.0.0.3:7100",
        "d": "quarantined at the start of the training: institution 'd' agreed to at most 3 rounds",
    }
    decision = decide_promotion(PromotionConfig(**POLICY), _evaluations({"a": 0.9}), "2", lost)
    assert not decision.promoted
    assert decision.reason.endswith(
        "trained and evaluated without c, lost mid-training "
        "(promotion.promote_with_lost_institutions is false: a person decides)"
    )
    allowed = decide_promotion(
        PromotionConfig(**POLICY, promote_with_lost_institutions=True), _evaluations({"a": 0.9}), None, lost
    )
    assert allowed.promoted  # and one quarantined at the start is like a failed validation: no reason to hold


def test_a_challenger_none_of_whose_updates_from_a_bank_counted_is_not_promoted_by_default():
    """Under a deadline or a buffer a slow bank's every update may arrive too late and be dropped: the challenger
    learned nothing from its rows, which a person must accept, as for a bank lost mid-training."""
    from tracking.lineage import uncounted

    participation = {"a": [[1, 0, 0, 0], [1, 0, 0, 0]], "c": [[0, 0, 0, 1], [0, 0, 1, 1]], "d": [[0, 1, 0, 1]]}
    assert uncounted(participation) == ["c"]  # d's one late update counted
    decision = decide_promotion(PromotionConfig(**POLICY), _evaluations({"a": 0.9}), "2", None, uncounted=["c"])
    assert not decision.promoted and decision.reason.endswith(
        "trained without the rows of c: none of their updates counted (each arrived after its round closed and was "
        "dropped; promotion.promote_with_lost_institutions is false: a person decides)"
    )
    allowed = PromotionConfig(**POLICY, promote_with_lost_institutions=True)
    assert decide_promotion(allowed, _evaluations({"a": 0.9}), None, None, uncounted=["c"]).promoted


def _with_fairness(evaluation: InstitutionEvaluation, approval: dict[str, float], role: str = "challenger", rows=200):
    """`evaluation` with counts by sex where each group's approval rate is `approval[group]` (half of each group
    good, the approved goods as many as the rate allows)."""
    from dataclasses import replace

    import numpy as np
    import pandas as pd

    from contract.schema import load_schema
    from institution.fairness import add_fairness, fairness_counts

    schema = load_schema("credit_default")
    parts = []
    for code, rate in zip((1, 2), approval.values(), strict=True):  # male, female
        probabilities = np.where(np.arange(rows) < rate * rows, 0.1, 0.9)
        frame = pd.DataFrame({"SEX": [code] * rows, "AGE": [40] * rows})
        parts.append(fairness_counts(probabilities, frame, np.arange(rows) % 2, schema, 0.5))
    return replace(evaluation, fairness={**evaluation.fairness, role: add_fairness(parts)})


PROTECTED = {"sex": "male", "age": "25 to 60"}


def test_a_group_approved_at_under_four_fifths_of_its_reference_blocks_promotion_and_is_named():
    [fair] = [_with_fairness(e, {"male": 0.8, "female": 0.7}) for e in _evaluations({"a": 0.8})]
    decision = decide_promotion(
        PromotionConfig(**POLICY), [fair], None, protected=PROTECTED, fairness=summed_fairness([fair])
    )
    assert decision.promoted
    assert "pass: no sex group's adverse impact ratio below 0.8 against male (lowest: female 0.875)" in decision.checks
    [unfair] = [_with_fairness(e, {"male": 0.8, "female": 0.6}) for e in _evaluations({"a": 0.8})]
    decision = decide_promotion(
        PromotionConfig(**POLICY), [unfair], None, protected=PROTECTED, fairness=summed_fairness([unfair])
    )
    assert not decision.promoted
    assert decision.reason == (
        "not promoted, no champion set: adverse impact ratio below 0.8: sex female 0.750 (approved 120 of 200, "
        "60.0%, against male 80.0%)"
    )
    # Too few rows in a group to judge it: reported, not judged.
    small = PromotionConfig(**POLICY, min_group_rows=500)
    assert decide_promotion(small, [unfair], None, protected=PROTECTED, fairness=summed_fairness([unfair])).promoted
    # Off: no fairness check at all; and none without protected attributes.
    off = PromotionConfig(**POLICY, min_adverse_impact_ratio=None)
    assert decide_promotion(off, [unfair], None, protected=PROTECTED, fairness=summed_fairness([unfair])).promoted
    assert decide_promotion(PromotionConfig(**POLICY), [unfair], None).promoted


def test_a_ratio_fallen_from_the_champions_beyond_the_margin_blocks_promotion():
    [evaluation] = _evaluations({"a": 0.81}, champion={"a": 0.80})
    before = _with_fairness(evaluation, {"male": 0.8, "female": 0.78}, role="champion")
    policy = PromotionConfig(**POLICY, max_adverse_impact_drop=0.05)
    kept = _with_fairness(before, {"male": 0.8, "female": 0.76})
    assert decide_promotion(policy, [kept], "3", protected=PROTECTED, fairness=summed_fairness([kept])).promoted
    fallen = _with_fairness(before, {"male": 0.8, "female": 0.7})
    decision = decide_promotion(policy, [fallen], "3", protected=PROTECTED, fairness=summed_fairness([fallen]))
    assert not decision.promoted
    assert (
        "fail: adverse impact ratio lower than under champion v3 by more than 0.05: sex female 0.875 against 0.975"
        in (decision.checks)
    )


def test_without_counts_by_group_the_fairness_of_a_model_cannot_be_tested_and_it_is_not_promoted():
    evaluations = _evaluations({"a": 0.8})
    decision = decide_promotion(
        PromotionConfig(**POLICY), evaluations, None, protected=PROTECTED, fairness=summed_fairness(evaluations)
    )
    assert (
        not decision.promoted
        and "fair lending could not be tested: the consortium's counts by protected group " in (decision.reason)
    )
