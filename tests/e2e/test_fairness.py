"""Fair lending end to end in simulation: a synthetic consortium where one bank's history is biased against women
(lower limits, defaults recorded at higher odds) trains a model that approves women at under four fifths of the
men's rate: the promotion guardrail keeps it from champion and says which group and figure; the same consortium
without the bias is promoted. Sex is never a model input; the bias reaches the model through the limits."""

import pytest
from mlflow import MlflowClient

from contract.synthetic import synthesize
from flows.retrain import retrain
from tests.conftest import run_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]
BANKS = ("alder_bank", "birch_credit_union", "cedar_savings", "dune_finance")
SETTINGS = {
    "training": {"rounds": 6, "model": {"kind": "logistic_regression"}},
    "baselines": {"enabled": False},
    "evaluation": {"threshold": 0.25},  # approved when the default probability is below 25 %
    "seed": 2,
    "promotion": {"max_calibration_error": 0.1},  # six rounds: the fairness guardrail is the one under test
}


@pytest.mark.parametrize("bias, promoted", [(0.0, True), (3.0, False)], ids=["without bias", "biased history"])
def test_a_bank_whose_history_is_biased_against_women_keeps_the_model_from_champion_and_the_decision_says_why(
    tracking_uri, tmp_path, bias, promoted
):
    # Every bank's customers of one age profile: the demo's banks differ in age (the young ones at the riskier
    # banks), which approves the under-25s at under four fifths of the rate of those 25 to 60 whatever the bias:
    # the guardrail's finding too, but not the variable under test here.
    changes = {bank: {"age_mean": 36} for bank in BANKS}
    changes["alder_bank"]["sex_bias"] = bias
    consortium = synthesize(tmp_path / "data", 4, seed=3, rows_scale=0.25, changes=changes)
    config = run_config(consortium, model_name="fair_lending", **SETTINGS)
    assert "SEX" not in config.feature_names and "AGE" not in config.feature_names
    summary = retrain(config)
    checks, registration = summary.registration.checks, summary.registration
    assert registration.promoted is promoted, registration.reason
    sex = next(c for c in checks if "sex" in c)
    metrics = MlflowClient(tracking_uri).get_run(registration.run_id).data.metrics
    ratio = metrics["fairness/sex/female/adverse_impact_ratio"]
    if promoted:
        assert sex == f"pass: no sex group's adverse impact ratio below 0.8 against male (lowest: female {ratio:.3f})"
        assert ratio > 0.9
    else:
        female = metrics["fairness/sex/female/rows"]
        approved = round(metrics["fairness/sex/female/approval_rate"] * female)
        assert sex.startswith(
            f"fail: adverse impact ratio below 0.8: sex female {ratio:.3f} (approved {approved:,} of {female:,.0f}, "
        )
        assert registration.reason.startswith("not promoted, no champion set: adverse impact ratio below 0.8: sex ")
        assert "champion" not in registration.aliases
        # Each bank's own figure shows where: the biased bank approves women least.
        by_bank = {bank: metrics[f"fairness/{bank}/sex/female/adverse_impact_ratio"] for bank in BANKS}
        assert min(by_bank, key=by_bank.get) == "alder_bank", by_bank
