"""node.service: the institution is the authority over its data. A node serves only its schema, refuses
trainings outside its policy or past its privacy budget, and trains each round of a training once."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from contract.schema import load_schema
from fed_models.keras_models import ModelSpec
from fed_models.training import RecordLevelPrivacy, TrainingSpec, spec_as_dict, weights_as_lists
from institution.statistics import consortium_layout, standardization
from node.config import NodeConfig, NodePolicy, TlsFiles
from node.policy import NodeRefusal, UnknownRun
from node.service import NodeService
from tests.conftest import TEST_EXPECTATIONS_DIR

CREDIT = load_schema("credit_default")
SPLIT = {"holdout_fraction": 0.2, "validation_fraction": 0.1, "seed": 1}


MEMBERS = ["alder_bank", "birch_credit_union", "cedar_savings", "dune_finance"]


def _service(
    small_consortium,
    tmp_path,
    consortium: dict | None = None,
    extract: Path | None = None,
    monitoring: Path | None = None,
    **policy,
) -> NodeService:
    config = NodeConfig.model_validate(
        {
            "institution": "dune_finance",
            "schema": "credit_default",
            "extract": {"path": str(extract or small_consortium["dune_finance"])},
            "monitoring": {"path": str(monitoring)} if monitoring is not None else None,
            "work_dir": str(tmp_path / "state"),
            "tls": TlsFiles(ca=tmp_path / "ca.crt", cert=tmp_path / "c.crt", key=tmp_path / "c.key"),
            "policy": NodePolicy(**policy),
            "consortium": consortium,
        }
    )
    return NodeService(config, TEST_EXPECTATIONS_DIR)


def _prepared(service, spec: TrainingSpec, run_key: str = "run-1", champion: str | None = None) -> dict:
    schema = {"name": CREDIT.name, "version": CREDIT.version}
    report = service.answer("Validate", {"schema": schema})["report"]
    assert report["passed"], report["reasons"]
    features = list(CREDIT.features)
    statistics = service.answer(
        "Statistics", {"schema": schema, "digest": report["digest"], "features": features, "split": SPLIT}
    )
    from institution.statistics import LocalStatistics

    stats = [LocalStatistics(**statistics)]
    layout = consortium_layout(CREDIT, features, stats)
    mean, std = standardization(layout, stats)
    request = {
        "schema": schema,
        "digest": report["digest"],
        "run_key": run_key,
        "spec": spec_as_dict(spec),
        "mean": mean,
        "std": std,
        "layout": layout.to_json(),
        "split": SPLIT,
        "champion": champion,
    }
    service.answer("Prepare", request)
    return request


def test_a_node_serves_only_its_schema(small_consortium, tmp_path):
    service = _service(small_consortium, tmp_path)
    with pytest.raises(
        NodeRefusal,
        match="its extract follows schema credit_default version 2; the coordinator asked for german_credit version 1",
    ):
        service.answer("Validate", {"schema": {"name": "german_credit", "version": 1}})


@pytest.mark.parametrize(
    "policy, spec, refusal",
    [
        ({"max_rounds": 5}, TrainingSpec(rounds=6), "agreed to at most 5 rounds, the run plans 6"),
        (
            {"model_kinds": ["logistic_regression"]},
            TrainingSpec(model=ModelSpec("mlp", (8,))),
            r"trains only \['logistic_regression'\], not mlp",
        ),
        ({"require_privacy": "record_level"}, TrainingSpec(), "trains only with record-level differential privacy"),
    ],
)
def test_a_training_outside_the_policy_is_refused(small_consortium, tmp_path, policy, spec, refusal):
    with pytest.raises(NodeRefusal, match=refusal):
        _prepared(_service(small_consortium, tmp_path, **policy), spec)


def test_a_round_is_trained_once_and_a_restarted_node_is_prepared_again(small_consortium, tmp_path):
    service = _service(small_consortium, tmp_path)
    spec = TrainingSpec(rounds=3, seed=1)
    _prepared(service, spec)
    weights = weights_as_lists(service.runs["run-1"].stages.initial_weights)
    round_1 = {"run_key": "run-1", "round": 1, "weights": weights, "client_seed": 7}
    first = service.answer("TrainRound", round_1)
    assert (
        service.answer("TrainRound", round_1) == first
    )  # asked again (a retry): the same answer, not a second training
    moved = {**weights, "trainable": [w + 0.1 for w in weights["trainable"]]}
    with pytest.raises(NodeRefusal, match="round 1 of run run-1 was already trained from other global weights"):
        service.answer("TrainRound", {**round_1, "weights": moved})
    restarted = _service(small_consortium, tmp_path)  # same work_dir: its round log survives
    assert restarted.answer("TrainRound", round_1) == first
    with pytest.raises(UnknownRun, match="has no prepared run run-1"):
        restarted.answer("TrainRound", {**round_1, "round": 2})


def test_the_node_charges_its_own_ledger_and_refuses_past_its_budget(small_consortium, tmp_path):
    from fed_models.accounting import record_level_epsilon, steps_per_round
    from node import wire

    service = _service(small_consortium, tmp_path, privacy_budget=1.0)
    spec = TrainingSpec(rounds=50, batch_size=32, seed=1, privacy=RecordLevelPrivacy(1.0, {"dune_finance": 2.0}))
    _prepared(service, spec)
    weights = weights_as_lists(service.runs["run-1"].stages.initial_weights)
    rows = len(service.runs["run-1"].fit.y)
    steps = steps_per_round(rows, 32, 1)
    epsilon = lambda rounds: record_level_epsilon(  # noqa: E731
        rows=rows,
        batch_size=32,
        steps=steps * rounds,
        noise_multiplier=2.0,
        delta=1 / rows,
    )
    allowed = max(r for r in range(1, 51) if epsilon(r) <= 1.0)
    for round_num in range(1, allowed + 1):
        answer = wire.decode(
            service.answer(
                "TrainRound", {"run_key": "run-1", "round": round_num, "weights": weights, "client_seed": round_num}
            )
        )
        weights = {**weights, "trainable": [w - 0.01 * u for w, u in zip(weights["trainable"], answer["update"])]}
    assert answer["rounds_trained"] == allowed and answer["epsilon"] == pytest.approx(epsilon(allowed))
    with pytest.raises(
        NodeRefusal,
        match=rf"privacy budget exceeded: round {allowed + 1} of this run would bring "
        rf"its epsilon to {epsilon(allowed + 1):.4f} on top of 0.0000 spent before, "
        rf"over its budget of 1",
    ):
        service.answer("TrainRound", {"run_key": "run-1", "round": allowed + 1, "weights": weights, "client_seed": 99})


def test_every_round_is_checked_against_the_rounds_declared_at_prepare(small_consortium, tmp_path):
    """A coordinator that declared 2 rounds cannot train a third, whatever round number it sends."""
    service = _service(small_consortium, tmp_path, max_rounds=6)
    _prepared(service, TrainingSpec(rounds=2, seed=1))
    weights = weights_as_lists(service.runs["run-1"].stages.initial_weights)
    service.answer("TrainRound", {"run_key": "run-1", "round": 1, "weights": weights, "client_seed": 1})
    for round_num in (3, 0):
        with pytest.raises(
            NodeRefusal,
            match=rf"run run-1 declared 2 rounds at Prepare; round {round_num} is not one "
            rf"of them \(the declared rounds\)",
        ):
            service.answer("TrainRound", {"run_key": "run-1", "round": round_num, "weights": weights, "client_seed": 1})


def test_privacy_is_accounted_at_the_nodes_own_delta_and_within_its_noise_and_per_run_limits(
    small_consortium, tmp_path
):
    """A coordinator that asks for delta 0.5 (which would make epsilon vanish) is accounted at the node's 1/rows;
    a noise multiplier below the policy's minimum, or a round past its epsilon per run, is refused."""
    from fed_models.accounting import record_level_epsilon, steps_per_round
    from node import wire

    spec = TrainingSpec(rounds=4, batch_size=32, seed=1, privacy=RecordLevelPrivacy(1.0, {"dune_finance": 1.0}))
    service = _service(small_consortium, tmp_path)
    request = _prepared(service, spec)
    service.answer("Prepare", {**request, "delta": 0.5})
    rows = len(service.runs["run-1"].fit.y)
    assert service.runs["run-1"].delta == pytest.approx(1 / rows)
    weights = weights_as_lists(service.runs["run-1"].stages.initial_weights)
    answer = wire.decode(
        service.answer("TrainRound", {"run_key": "run-1", "round": 1, "weights": weights, "client_seed": 1})
    )

    def epsilon(rounds: int) -> float:
        return record_level_epsilon(
            rows=rows, batch_size=32, steps=steps_per_round(rows, 32, 1) * rounds, noise_multiplier=1.0, delta=1 / rows
        )

    expected = epsilon(1)
    assert answer["epsilon"] == pytest.approx(expected) and expected > 0.1

    with pytest.raises(
        NodeRefusal,
        match=r"noise multiplier of at least 2; the run asks for 1.0 "
        r"\(policy.min_noise_multiplier\)",
    ):
        _prepared(_service(small_consortium, tmp_path / "noisy", min_noise_multiplier=2.0), spec)
    capped = _service(small_consortium, tmp_path / "capped", max_epsilon_per_run=(epsilon(1) + epsilon(2)) / 2)
    _prepared(capped, spec)
    capped.answer("TrainRound", {"run_key": "run-1", "round": 1, "weights": weights, "client_seed": 1})
    with pytest.raises(
        NodeRefusal,
        match=r"round 2 of this run would bring its epsilon to .* over the .* one training "
        r"may spend \(policy.max_epsilon_per_run\)",
    ):
        capped.answer("TrainRound", {"run_key": "run-1", "round": 2, "weights": weights, "client_seed": 2})


def test_a_node_that_requires_secure_aggregation_trains_no_trees(small_consortium, tmp_path):
    """XGBoost's federated server sums each institution's gradient histograms itself: not a masked sum."""
    from fed_trees.spec import TreeSpec

    service = _service(small_consortium, tmp_path, {"members": MEMBERS}, require_secure_aggregation=True)
    with pytest.raises(
        NodeRefusal,
        match=r"sends only masked sums \(policy.require_secure_aggregation\); XGBoost's "
        r"federated server sees each institution's gradient histograms",
    ):
        service.answer(
            "TrainTrees",
            {
                "schema": {"name": CREDIT.name, "version": CREDIT.version},
                "digest": "0" * 64,
                "layout": "{}",
                "split": SPLIT,
                "spec": TreeSpec().as_dict(),
                "run_key": "trees-1",
                "world_size": 3,
                "rank": 0,
                "server": "127.0.0.1:1",
                "mean": [],
                "std": [],
            },
        )


def test_a_node_that_requires_secure_aggregation_sends_nothing_in_the_clear(small_consortium, tmp_path):
    """Its statistics and a training prepared without secure aggregation are refused; a run prepared for it
    still refuses a plain round or validation (its updates leave only masked)."""
    service = _service(small_consortium, tmp_path, {"members": MEMBERS}, require_secure_aggregation=True)
    schema = {"name": CREDIT.name, "version": CREDIT.version}
    report = service.answer("Validate", {"schema": schema})["report"]
    with pytest.raises(NodeRefusal, match="'dune_finance' sends its statistics only through secure aggregation"):
        service.answer(
            "Statistics",
            {"schema": schema, "digest": report["digest"], "features": list(CREDIT.features), "split": SPLIT},
        )
    open_service = _service(small_consortium, tmp_path / "open")
    request = _prepared(open_service, TrainingSpec(rounds=2))
    with pytest.raises(NodeRefusal, match="sends its model updates only through secure aggregation"):
        service.answer("Prepare", request)
    service.answer(
        "Prepare",
        {
            **request,
            "secure_aggregation": True,
            "secure_encoding": {"clip_norm": 10.0, "institutions": 4, "weight_bound": 1e6},
        },
    )
    weights = weights_as_lists(open_service.runs["run-1"].stages.initial_weights)
    with pytest.raises(NodeRefusal, match="sends its model updates only through secure aggregation"):
        service.answer("TrainRound", {"run_key": "run-1", "round": 1, "weights": weights, "client_seed": 1})
    with pytest.raises(NodeRefusal, match="sends its validation metrics only through secure aggregation"):
        service.answer("ValidateRound", {"run_key": "run-1", "weights": weights})


def test_a_node_that_requires_secure_aggregation_sends_no_profile_and_checks_drift_against_its_own(
    small_consortium, tmp_path
):
    """The profile (per-feature means, quantiles, level shares) is most of what the secure statistics sum hides: the
    node keeps it as its own drift reference, and its drift reasons and shared page give none of its figures."""
    import pandas as pd

    extract = tmp_path / "dune.csv"
    shutil.copy(small_consortium["dune_finance"], extract)
    service = _service(
        small_consortium, tmp_path, {"members": MEMBERS}, extract=extract, require_secure_aggregation=True
    )
    schema = {"name": CREDIT.name, "version": CREDIT.version}
    first = service.answer("Validate", {"schema": schema})
    assert first["report"]["passed"] and first["report"]["profile"] is None
    assert first["report"]["institution_page"] is None  # the node's own page stays unnamed, its path too
    mean = pd.read_csv(extract)["LIMIT_BAL"].mean()
    frame = pd.read_csv(extract)
    frame["LIMIT_BAL"] = frame["LIMIT_BAL"] * 1000  # a units change: drift from the node's own reference
    frame.to_csv(extract, index=False)
    second = service.answer("Validate", {"schema": schema, "reference": None})
    report = second["report"]
    assert not report["passed"] and report["profile"] is None
    assert (
        "LIMIT_BAL mean within 1 std of the last accepted extract: failed (observed value in the institution's "
        "checks page)" in report["reasons"]
    )
    figures = [f"{mean:.4g}", f"{mean * 1000:.4g}", str(round(mean))]
    assert not [f for f in figures if f in " ".join(report["reasons"]) or f in second["data_docs_html"]]
    again = service.answer(
        "Validate", {"schema": schema}
    )  # the reference is still the accepted extract, not the drifted one
    assert not again["report"]["passed"]


def test_a_node_takes_part_in_secure_sums_only_within_its_consortium(small_consortium, tmp_path):
    """Without members in its config it takes part in none; with them, a sum of two or with a stranger is refused
    (tests/e2e/test_adversarial_coordinator.py tries every rule against a deviating coordinator)."""
    request = {
        "session": "s",
        "participants": ["dune_finance", "alder_bank", "birch_credit_union"],
        "threshold": 3,
        "added": "statistics",
        "request": {},
    }
    with pytest.raises(NodeRefusal, match=r"takes part in no secure sum: its config lists no consortium members"):
        _service(small_consortium, tmp_path).answer("SecureBegin", request)
    service = _service(small_consortium, tmp_path / "member", {"members": MEMBERS})
    with pytest.raises(
        NodeRefusal,
        match=r"a sum of 2 inputs is asked for; a released sum holds at least 3 "
        r"\(rule: minimum inputs\)",
    ):
        service.answer("SecureBegin", {**request, "participants": ["dune_finance", "alder_bank"], "threshold": 2})
    with pytest.raises(NodeRefusal, match=r"\['elm'\] is not a member of the consortium"):
        service.answer("SecureBegin", {**request, "participants": ["dune_finance", "alder_bank", "elm"]})


@pytest.mark.parametrize(
    "consortium, error",
    [
        ({"members": ["alder_bank", "birch_credit_union", "cedar_savings"]}, "must include this institution"),
        ({"members": [*MEMBERS, "coordinator"]}, "must not include the coordinator"),
        ({"members": MEMBERS, "min_threshold": 5}, "min_threshold 5 is more than the 4 members"),
        ({"members": MEMBERS, "fingerprints": {"elm": "ab" * 32}}, r"fingerprints for \['elm'\], who are not members"),
        (None, "require_secure_aggregation needs consortium.members"),
    ],
)
def test_a_node_config_names_its_consortium_consistently(small_consortium, tmp_path, consortium, error):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error):
        _service(small_consortium, tmp_path, consortium, require_secure_aggregation=True)


def test_evaluate_scores_only_the_runs_challenger_and_named_champion_a_policy_number_of_times(
    small_consortium, tmp_path
):
    """A coordinator cannot have a crafted model scored (per-institution ROC points and calibration bins would read
    out a feature's distribution by label): only the weights the node validated in the run, with the run's layout,
    and the champion named at Prepare, at most policy.max_evaluations_per_run times."""
    import json

    from consortium.nodes import _zip_model
    from contract.data import Split
    from engines.tff import export
    from institution.statistics import FeatureSpace
    from riskmodel.layout import Layout
    from riskmodel.model import BINS_KEY, MANIFEST, files_digest
    from runconfig import EvaluationConfig, ModelConfig

    service = _service(small_consortium, tmp_path, max_evaluations_per_run=6)  # refused requests count too
    spec = TrainingSpec(rounds=2, seed=1)
    probe = _prepared(service, spec, "probe")  # a run, for its layout and weights
    layout, weights = Layout.from_json(probe["layout"]), weights_as_lists(service.runs["probe"].stages.initial_weights)

    def exported(name: str, shift: float, model_layout=layout) -> Path:
        return Path(
            export(
                [w + shift for w in weights["trainable"]],
                ModelConfig(),
                FeatureSpace(CREDIT, model_layout, Split(0.2, 0.2, 1), tuple(probe["mean"]), tuple(probe["std"]), 0, 0),
                tmp_path / name,
            )
        )

    champion, other = exported("champion", 0.3), exported("other", 0.4)
    request = _prepared(service, spec, "run-1", champion=files_digest(champion))
    moved = {**weights, "trainable": [w + 0.2 for w in weights["trainable"]]}
    service.answer("ValidateRound", {"run_key": "run-1", "weights": moved})  # the node sees (and records) these weights
    challenger, crafted = exported("challenger", 0.2), exported("crafted", 0.25)
    relaid = exported("relaid", 0.2)
    manifest = json.loads((relaid / MANIFEST).read_text())
    manifest["layout"]["features"] = list(reversed(manifest["layout"]["features"]))
    (relaid / MANIFEST).write_text(json.dumps(manifest))
    # The run's weights and layout, but bins a thousand times finer than the run's: counts per bin that leave the
    # node with the development reference and each month's monitoring would place single customers' values.
    rebinned = exported("rebinned", 0.2)
    manifest = json.loads((rebinned / MANIFEST).read_text())
    for entry in manifest[BINS_KEY]:
        if entry["edges"]:
            low, high = entry["edges"][0], entry["edges"][-1]
            entry["edges"] = list(np.linspace(low, high, 10_000))
    (rebinned / MANIFEST).write_text(json.dumps(manifest))

    def evaluate(run_key: str, **models: Path) -> dict:
        return service.answer(
            "Evaluate",
            {
                "schema": request["schema"],
                "digest": request["digest"],
                "split": SPLIT,
                "run_key": run_key,
                "evaluation": EvaluationConfig().model_dump(),
                "models": {role: _zip_model(path) for role, path in models.items()},
            },
        )

    with pytest.raises(
        NodeRefusal, match="evaluates only the models of a training it took part in; it took part in no run run-9"
    ):
        evaluate("run-9", challenger=challenger)
    answer = evaluate("run-1", challenger=challenger, champion=champion)
    assert set(answer["metrics"]) == {"challenger", "champion"}
    for models, refusal in [
        ({"challenger": crafted}, "the challenger sent holds weights this node never trained or validated in that run"),
        ({"challenger": relaid}, "the challenger sent encodes the features with another layout"),
        ({"challenger": rebinned}, "the challenger sent counts features in other bins than the run's development"),
        ({"champion": other}, "the champion sent is not the champion named when the run began"),
        ({"pooled": challenger}, "the pooled sent is neither its challenger nor its champion"),
    ]:
        with pytest.raises(NodeRefusal, match=refusal):
            evaluate("run-1", **models)
    with pytest.raises(
        NodeRefusal,
        match=r"evaluates the models of run run-1 at most 6 times "
        r"\(policy.max_evaluations_per_run\)",
    ):
        evaluate("run-1", challenger=challenger)


@pytest.mark.slow
def test_a_coordinator_with_a_valid_certificate_is_refused_each_bypass_by_node_processes(small_consortium, tmp_path):
    """Two `fedrisk node serve` processes, dialled over mutual TLS by a scripted coordinator holding the consortium's
    coordinator certificate. Each bypass of issue 27 is refused with the policy field it breaks, and the node's
    audit trail has every one of them."""
    from contextlib import ExitStack

    from consortium.nodes import NodeError, NodeHandle, Tls, _zip_model, send
    from contract.data import Split
    from engines.tff import export
    from fed_models.training import spec_as_dict
    from fed_trees.spec import TreeSpec
    from hostguard.pki import init_ca, issue
    from institution.statistics import FeatureSpace, LocalStatistics
    from node.audit import AuditTrail
    from riskmodel.layout import Layout
    from runconfig import EvaluationConfig, ModelConfig
    from tests.conftest import free_port, serve_nodes

    pki = tmp_path / "pki"
    init_ca(pki)
    for name in ("coordinator", *MEMBERS):
        issue(pki, name, ("127.0.0.1",))
    policies = {
        "dune_finance": {
            "max_rounds": 6,
            "require_privacy": "record_level",
            "min_noise_multiplier": 0.8,
            "max_evaluations_per_run": 2,
        },
        "alder_bank": {"require_secure_aggregation": True},
    }
    configs = {
        name: {
            "institution": name,
            "listen": f"127.0.0.1:{free_port()}",
            "schema": "credit_default",
            "extract": {"path": str(small_consortium[name])},
            "work_dir": str(tmp_path / name / "state"),
            "tls": {"ca": str(pki / "ca.crt"), "cert": str(pki / f"{name}.crt"), "key": str(pki / f"{name}.key")},
            "policy": policy,
            "consortium": {"members": MEMBERS},
        }
        for name, policy in policies.items()
    }
    with ExitStack() as stack:
        handles = {name: NodeHandle(name, address) for name, address in serve_nodes(stack, configs, tmp_path).items()}
        tls = Tls(str(pki / "ca.crt"), str(pki / "coordinator.crt"), str(pki / "coordinator.key"))

        def ask(name: str, operation: str, request: dict):
            return send(handles[name], tls, operation, request)

        def refused(name: str, operation: str, request: dict) -> str:
            with pytest.raises(NodeError) as error:
                ask(name, operation, request)
            assert error.value.refusal, str(error.value)
            return str(error.value)

        schema = {"name": CREDIT.name, "version": CREDIT.version}
        digest = ask("dune_finance", "Validate", {"schema": schema})["report"]["digest"]
        features = list(CREDIT.features)
        stats = [
            LocalStatistics(
                **ask(
                    "dune_finance",
                    "Statistics",
                    {"schema": schema, "digest": digest, "features": features, "split": SPLIT},
                )
            )
        ]
        layout = consortium_layout(CREDIT, features, stats)
        mean, std = standardization(layout, stats)

        def prepare(run_key: str, spec: TrainingSpec, **extra) -> dict:
            request = {
                "schema": schema,
                "digest": digest,
                "run_key": run_key,
                "spec": spec_as_dict(spec),
                "mean": mean,
                "std": std,
                "layout": layout.to_json(),
                "split": SPLIT,
                **extra,
            }
            return ask("dune_finance", "Prepare", request)

        private = RecordLevelPrivacy(1.0, {"dune_finance": 1.0})
        # Rounds: declared 2, asked for a third; declared past the policy's 6.
        prepare("run-1", TrainingSpec(rounds=2, seed=1, privacy=private))
        from fed_models import runtime
        from fed_models.training import build_stages, weights_as_lists

        runtime.ensure_context()  # this process's own worker, stopped by its pid (TFF's stock one outlived it)
        weights = weights_as_lists(
            build_stages(
                TrainingSpec(rounds=2, seed=1, privacy=private), np.asarray(mean), np.asarray(std), n_clients=1
            ).initial_weights
        )
        first = ask(
            "dune_finance", "TrainRound", {"run_key": "run-1", "round": 1, "weights": weights, "client_seed": 1}
        )
        assert "round 3 is not one of them (the declared rounds)" in refused(
            "dune_finance", "TrainRound", {"run_key": "run-1", "round": 3, "weights": weights, "client_seed": 3}
        )
        assert "(policy.max_rounds)" in refused(
            "dune_finance",
            "Prepare",
            {
                "schema": schema,
                "digest": digest,
                "run_key": "run-2",
                "spec": spec_as_dict(TrainingSpec(rounds=10, privacy=private)),
                "mean": mean,
                "std": std,
                "layout": layout.to_json(),
                "split": SPLIT,
            },
        )
        # Privacy: no DP, too little noise, a lax delta (accounted at the node's own).
        for spec, field in [
            (TrainingSpec(rounds=2), "policy.require_privacy"),
            (
                TrainingSpec(rounds=2, privacy=RecordLevelPrivacy(1.0, {"dune_finance": 0.3})),
                "policy.min_noise_multiplier",
            ),
        ]:
            with pytest.raises(NodeError, match=rf"\({field}\)"):
                prepare("run-3", spec)
        lax = prepare("run-4", TrainingSpec(rounds=2, seed=1, privacy=private), delta=0.5)
        assert lax["delta"] == pytest.approx(1 / lax["fit_rows"])
        assert first["delta"] == pytest.approx(1 / lax["fit_rows"]) and first["epsilon"] > 0
        # Evaluate: a model crafted by the coordinator, then more often than the policy allows.
        crafted = Path(
            export(
                [w + 0.5 for w in weights["trainable"]],
                ModelConfig(),
                FeatureSpace(
                    CREDIT, Layout.from_json(layout.to_json()), Split(0.2, 0.2, 1), tuple(mean), tuple(std), 0, 0
                ),
                tmp_path / "crafted",
            )
        )
        evaluate = {
            "schema": schema,
            "digest": digest,
            "split": SPLIT,
            "run_key": "run-1",
            "evaluation": EvaluationConfig().model_dump(),
            "models": {"challenger": _zip_model(crafted)},
        }
        assert "holds weights this node never trained or validated in that run" in refused(
            "dune_finance", "Evaluate", evaluate
        )
        refused("dune_finance", "Evaluate", evaluate)
        assert "(policy.max_evaluations_per_run)" in refused("dune_finance", "Evaluate", evaluate)
        # A node that sends only masked sums: no statistics in the clear, no trees (the server sees histograms).
        sealed = ask("alder_bank", "Validate", {"schema": schema})["report"]
        assert sealed["profile"] is None
        assert "(policy.require_secure_aggregation)" in refused(
            "alder_bank",
            "TrainTrees",
            {
                "schema": schema,
                "digest": sealed["digest"],
                "spec": TreeSpec().as_dict(),
                "layout": layout.to_json(),
                "split": SPLIT,
                "run_key": "trees-1",
                "rank": 0,
                "world_size": 3,
                "server": "127.0.0.1:1",
                "mean": [],
                "std": [],
            },
        )
        assert "only through secure aggregation" in refused(
            "alder_bank",
            "Statistics",
            {"schema": schema, "digest": sealed["digest"], "features": features, "split": SPLIT},
        )

    trail = {name: AuditTrail(Path(configs[name]["work_dir"])).read() for name in policies}
    refusals = [(e.operation, e.reason) for e in trail["dune_finance"] if e.outcome == "refused"]
    for operation, field in [
        ("TrainRound", "(the declared rounds)"),
        ("Prepare", "(policy.max_rounds)"),
        ("Prepare", "(policy.require_privacy)"),
        ("Prepare", "(policy.min_noise_multiplier)"),
        ("Evaluate", "never trained or validated"),
        ("Evaluate", "(policy.max_evaluations_per_run)"),
    ]:
        assert any(o == operation and field in (reason or "") for o, reason in refusals), (operation, field)
    served = [(e.operation, e.run) for e in trail["dune_finance"] if e.outcome == "served"]
    assert ("TrainRound", "run-1") in served and ("Prepare", "run-4") in served
    assert [e.operation for e in trail["alder_bank"] if e.outcome == "refused"] == ["TrainTrees", "Statistics"]
