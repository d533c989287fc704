"""The privacy stage: planning each institution's noise and epsilon, the budget ledger that refuses an
over-budget retraining (champion untouched), DP end to end through the flow, and the membership-
inference attack that DP must blunt on the real UCI data."""

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from engines.privacy import PrivacyPlanError, membership_advantage, plan_privacy, spent_privacy
from fed_models.accounting import client_level_epsilon, record_level_epsilon, steps_per_round
from flows.config import parse_config
from flows.retrain import retrain
from flows.settings import PROJECT_ROOT
from runconfig import PrivacyConfig, TrainingConfig
from tasks.privacy import reserve_privacy_budget
from tests.conftest import TEST_EXPECTATIONS_DIR, require_uci
from tracking.ledger import LEDGER_EXPERIMENT, read_ledger, spent_totals
from tracking.privacy import PrivacyBudgetExceeded

TRAINING = {"rounds": 20, "batch_size": 128, "local_epochs": 1}
RECORD = {
    "mechanism": "record_level",
    "clip_norm": 1.0,
    "noise_multiplier": None,
    "target_epsilon": None,
    "delta": None,
    "adaptive_clipping": False,
}


def _plan(privacy: dict, training: dict, rows: dict[str, int]):
    return plan_privacy(PrivacyConfig(**privacy), TrainingConfig(**training), rows)


def test_a_noise_multiplier_plans_each_institutions_epsilon_with_delta_one_over_its_rows():
    plan = _plan({**RECORD, "noise_multiplier": 1.2}, TRAINING, {"big": 16_000, "small": 1_600})
    big, small = plan.institution("big"), plan.institution("small")
    assert big.delta == 1 / 16_000 and small.delta == 1 / 1_600
    assert big.steps_per_round == steps_per_round(16_000, 128, 1) == 125
    assert big.epsilon == record_level_epsilon(
        rows=16_000, batch_size=128, steps=125 * 20, noise_multiplier=1.2, delta=1 / 16_000
    )
    assert small.epsilon > big.epsilon  # a small institution's customers are sampled more often
    assert plan.max_epsilon == small.epsilon


def test_a_target_epsilon_calibrates_each_institutions_noise_to_it():
    plan = _plan({**RECORD, "target_epsilon": 3.0, "delta": 1e-5}, TRAINING, {"big": 16_000, "small": 1_600})
    for institution in plan.institutions:
        assert 2.98 < institution.epsilon <= 3.0 and institution.delta == 1e-5
    assert plan.institution("small").noise_multiplier > plan.institution("big").noise_multiplier
    fewer = spent_privacy(plan, {"big": 5, "small": 0})  # stopped early; small sampled out of every round
    assert fewer.institution("big").epsilon < 3.0 and fewer.institution("small").epsilon == 0.0
    with pytest.raises(PrivacyPlanError, match="institution 'small': privacy.target_epsilon: epsilon 1e-06"):
        _plan({**RECORD, "target_epsilon": 1e-6, "delta": 1e-12}, {**TRAINING, "rounds": 10_000}, {"small": 10})


def test_under_partial_participation_each_institution_is_planned_for_the_rounds_the_sampler_picks_it_in():
    """One of three per round: each institution is planned for exactly the rounds the seeded sampler gives it (a
    public schedule, no amplification claimed), so a target epsilon needs less noise; a buffered run may restart an
    institution every round and is planned for all of them."""
    from fed_models.schedule import rounds_sampled

    rows = {"a": 4_000, "b": 4_000, "c": 4_000}
    target = {**RECORD, "target_epsilon": 3.0, "delta": 1e-5}
    sampled = _plan(target, {**TRAINING, "clients_per_round": 1}, rows)
    every = _plan(target, TRAINING, rows)
    picked = rounds_sampled(3, 1, 0, TRAINING["rounds"])
    assert [i.rounds for i in sampled.institutions] == picked and sum(picked) == TRAINING["rounds"]
    for planned, full in zip(sampled.institutions, every.institutions, strict=True):
        assert 2.98 < planned.epsilon <= 3.0 and planned.noise_multiplier < full.noise_multiplier
    buffered = {**TRAINING, "clients_per_round": 1, "schedule": {"mode": "buffered", "buffer_size": 1}}
    assert [i.rounds for i in _plan(target, buffered, rows).institutions] == [TRAINING["rounds"]] * 3


def test_across_silos_the_spent_privacy_is_what_each_node_charged_at_its_own_delta():
    plan = _plan({**RECORD, "noise_multiplier": 1.2, "delta": 0.5}, TRAINING, {"node": 1_600, "local": 1_600})
    spent = spent_privacy(plan, {"node": 3, "local": 3}, charged={"node": (0.84, 1 / 1_600)})
    assert (spent.institution("node").epsilon, spent.institution("node").delta) == (0.84, 1 / 1_600)
    assert spent.institution("local").delta == 0.5  # no node's account: the coordinator's own
    client = _plan({**RECORD, "mechanism": "client_level", "noise_multiplier": 4.0}, TRAINING, {"node": 10})
    assert spent_privacy(client, {"node": 3}, {"node": (0.0, 1e-3)}).institution("node").epsilon > 0  # server-side


def test_client_level_noise_protects_each_institution_over_the_rounds_it_trains():
    plan = _plan({**RECORD, "mechanism": "client_level", "noise_multiplier": 4.0}, TRAINING, {"a": 10, "b": 20})
    assert {i.delta for i in plan.institutions} == {1e-5}
    assert plan.institution("a").epsilon == client_level_epsilon(rounds=20, noise_multiplier=4.0, delta=1e-5)
    assert (plan.mechanism, plan.clip_norm, plan.adaptive_clipping) == ("client_level", 1.0, False)
    assert {i.institution: i.noise_multiplier for i in plan.institutions} == {"a": 4.0, "b": 4.0}
    assert _plan({**RECORD, "mechanism": "none"}, TRAINING, {"a": 10}) is None


@pytest.mark.usefixtures("prefect_api")
def test_the_ledger_refuses_a_run_past_an_institutions_budget_and_records_nothing(tracking_uri):
    plan = _plan({**RECORD, "target_epsilon": 2.0}, TRAINING, {"bank_a": 7000, "bank_b": 3000})
    first = reserve_privacy_budget(tracking_uri, "credit", "key-1", "flow-1", plan, {"bank_a": 5.0, "bank_b": 5.0})
    again = reserve_privacy_budget(tracking_uri, "credit", "key-1", "flow-2", plan, {"bank_a": 5.0, "bank_b": 5.0})
    assert again == first  # the same retraining resuming takes over its own reservation
    reserve_privacy_budget(tracking_uri, "fraud", "key-2", "flow-3", plan, {"bank_a": 5.0, "bank_b": 5.0})
    before = read_ledger(tracking_uri)
    with pytest.raises(PrivacyBudgetExceeded) as refused:
        reserve_privacy_budget(tracking_uri, "credit", "key-3", "flow-4", plan, {"bank_a": 100.0, "bank_b": 5.0})
    spent = plan.institution("bank_b").epsilon
    assert str(refused.value) == (
        f"privacy budget exceeded, nothing was trained or registered: institution 'bank_b': this run would spend "
        f"epsilon {spent:.3f} (delta {1 / 3000:.2g}) on top of {2 * spent:.3f} already spent by 2 earlier "
        f"retraining(s) (credit reserved, fraud reserved), over its budget of 5"
    )
    assert read_ledger(tracking_uri) == before  # the refused run left no charge
    assert spent_totals(before, "bank_a")[0] == pytest.approx(2 * plan.institution("bank_a").epsilon)


def test_the_membership_advantage_is_zero_for_lookalikes_and_one_for_giveaways():
    rng = np.random.default_rng(0)
    assert membership_advantage(rng.random(5000), rng.random(5000)) < 0.05
    assert membership_advantage(np.zeros(100), np.ones(100)) == 1.0


@pytest.mark.usefixtures("prefect_api")
def test_a_dp_retraining_carries_its_epsilon_and_an_over_budget_one_leaves_the_champion(tracking_uri, small_consortium):
    from tracking.lineage import trace

    config = parse_config(
        {
            "model_name": "credit_private",
            "institutions": [
                {"name": n, "path": str(p), **({"privacy_budget": 4.0} if n == "cedar_savings" else {})}
                for n, p in small_consortium.items()
            ],
            "training": {"rounds": 4, "batch_size": 128, "client_learning_rate": 0.5},
            "privacy": {"mechanism": "record_level", "target_epsilon": 2.5, "budget_epsilon": 20},
            "quorum": 4,
            "seed": 1,
            "promotion": {"max_calibration_error": None},
        },
        Path("."),
    )
    first = retrain(config)
    assert first.registration.version == "1" and first.registration.promoted
    assert first.weighted["roc_auc"] > 0.65  # private, and still a credit model
    client = MlflowClient()
    version = client.get_model_version("credit_private", "1")
    [entry] = read_ledger(tracking_uri)
    assert entry.status == "spent" and entry.version == "1" and set(entry.epsilon) == set(small_consortium)
    assert version.tags["privacy.mechanism"] == "record_level" and version.tags["privacy.ledger_run"] == entry.run_id
    metrics = client.get_run(version.run_id).data.metrics
    for name in small_consortium:
        epsilon = float(version.tags[f"privacy.epsilon.{name}"])
        assert 2.4 < epsilon <= 2.5 and epsilon == pytest.approx(entry.epsilon[name], abs=1e-4)
        assert metrics[f"privacy/epsilon/{name}"] == pytest.approx(epsilon, abs=1e-4)
    card = Path(client.download_artifacts(version.run_id, "model_card.html")).read_text()
    assert "Record-level differential privacy" in card and f"{entry.epsilon['alder_bank']:.4f}" in card
    _, links = trace(
        tracking_uri, "credit_private@champion", PROJECT_ROOT, TEST_EXPECTATIONS_DIR, "http://127.0.0.1:5000"
    )
    privacy = next(link for link in links if link.what == "privacy")
    assert privacy.resolved and privacy.reference == f"record_level, ledger runs:/{entry.run_id}"

    with pytest.raises(
        PrivacyBudgetExceeded,
        match=r"institution 'cedar_savings': this run would spend epsilon "
        r"2\.\d{3} .* on top of 2\.\d{3} already spent by 1 earlier "
        r"retraining\(s\) \(credit_private v1\), over its budget of 4",
    ):
        retrain(config)
    assert [str(v.version) for v in client.search_model_versions("name='credit_private'")] == ["1"]
    assert {k: str(v) for k, v in client.get_registered_model("credit_private").aliases.items()} == {
        "champion": "1",
        "challenger": "1",
    }
    assert [e.run_id for e in read_ledger(tracking_uri)] == [entry.run_id]
    assert client.get_experiment_by_name(LEDGER_EXPERIMENT) is not None


def test_dp_blunts_a_membership_inference_attack_on_the_real_uci_banks():
    """An MLP that memorizes 400 customers per bank gives members away to a loss-threshold attack;
    the same training with DP-SGD at epsilon 8 gives much less away, and is still a credit model
    (benchmarks/privacy_uci.py has every epsilon and seed)."""
    require_uci()
    import runpy
    import sys

    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    try:
        bench = runpy.run_path(str(PROJECT_ROOT / "benchmarks" / "privacy_uci.py"))
        common = runpy.run_path(str(PROJECT_ROOT / "benchmarks" / "common.py"))
    finally:
        sys.path.remove(str(PROJECT_ROOT / "benchmarks"))
    frames, holdout = common["partition_uci"](common["UCI_DIR"], "iid")
    banks = [
        common["Institution"](i.name, i.x_fit[:400], i.y_fit[:400], i.x_validation, i.y_validation)
        for i in common["split_institutions"](frames, 0.1, 0)
    ]
    mean, std = common["standardize"](banks)
    x_out, y_out = common["arrays"](holdout)

    advantage, auc = {}, {}
    for epsilon in (None, 8.0):
        spec, weights, _ = bench["_train"](
            banks,
            mean,
            std,
            bench["MEMORIZING"],
            epsilon=epsilon,
            rounds=10,
            local_epochs=20,
            batch_size=64,
            learning_rate=0.2 if epsilon else 0.5,
            seed=0,
            privacy_rng=np.random.default_rng(0),
        )
        auc[epsilon], advantage[epsilon] = bench["_score"](spec, weights, mean, std, banks, x_out, y_out)
    assert advantage[None] > 0.09  # 1,200 members against 1,200 others: chance stays under about 0.055
    assert advantage[8.0] < 0.05 and advantage[8.0] < advantage[None] / 2
    assert auc[None] > 0.69 and auc[8.0] > 0.63
