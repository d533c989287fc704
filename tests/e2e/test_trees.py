"""The XGBoost engine: federated gradient-boosted trees behind the same training interface as TFF.

Real XGBoost federated workers (one process per institution) and server (loopback, mutual TLS)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.config import parse_config
from flows.retrain import retrain
from tests.conftest import descendants, run_config

pytestmark = pytest.mark.usefixtures("prefect_api")
TREES = {"engine": "xgboost", "rounds": 40, "max_depth": 3, "learning_rate": 0.2, "early_stopping": {"patience": 5}}


def _config(consortium, name: str, training: dict, **settings):
    return run_config(consortium, model_name=name, quorum=3, seed=1, training=training, **settings)


def _three(small_consortium) -> dict[str, Path]:
    return {n: small_consortium[n] for n in ("alder_bank", "birch_credit_union", "cedar_savings")}


@pytest.mark.parametrize("training", [TREES, {"rounds": 4}], ids=["xgboost", "tff"])
def test_both_engines_honour_the_training_interface(small_consortium, tmp_path, training):
    """Either engine: an exported model that scores raw rows, per-round federated validation figures, the
    exported round, and the engine's own lineage tags."""
    from consortium.local import LocalConsortium
    from contract.data import Extract, Split
    from engines.registry import engine_for
    from institution.statistics import feature_space
    from riskmodel import model as exported

    config = _config(_three(small_consortium), "engines", training)
    schema, features = config.data_schema, config.feature_names
    consortium = LocalConsortium(tuple(Extract(n, p) for n, p in _three(small_consortium).items()))
    split = Split(0.2, config.training.validation_fraction, 1)
    statistics = [consortium.statistics(n, schema, features, split) for n in consortium.names]
    space = feature_space(schema, features, split, statistics)
    outcome = engine_for(config.training).train(consortium, space, config.training, 1.0, tmp_path / "model")
    model = exported.load(Path(outcome.model_path))
    rows = pd.read_csv(small_consortium["dune_finance"]).head(50)  # raw rows of an institution it never saw
    probability = model.predict_proba(rows)
    assert probability.shape == (50,) and np.all((probability > 0) & (probability < 1))
    assert outcome.rounds and all({"round", "validation_loss", "validation_auc"} <= set(r) for r in outcome.rounds)
    assert 1 <= outcome.best_round <= len(outcome.rounds)
    assert outcome.lineage["training.engine"] == config.training.engine
    assert set(outcome.rounds_trained) == set(consortium.names)


def test_federated_trees_equal_trees_grown_on_the_pooled_rows(small_consortium, tmp_path):
    """Histograms summed across institutions are the pooled rows' histograms: the same trees."""
    from fed_trees.spec import TreeSpec
    from fed_trees.training import TreeData, train_centralized, train_federated
    from hostguard.loopback import isolation

    rng = np.random.default_rng(0)
    parts = []
    for name, n in (("a", 400), ("b", 300), ("c", 200)):
        x = rng.integers(0, 8, size=(n, 3)).astype(float)  # few distinct values: the same bins either way
        y = (rng.random(n) < 1 / (1 + np.exp(-(x[:, 0] - x[:, 1])))).astype(float)
        parts.append(TreeData(name, x[: n - 50], y[: n - 50], x[n - 50 :], y[n - 50 :]))
    spec = TreeSpec(
        rounds=10, max_depth=3, learning_rate=0.3, min_child_weight=1, early_stopping_rounds=None, max_bin=16
    )
    federated = train_federated(parts, spec, tmp_path / "federated", isolation=isolation(False))
    pooled = train_centralized(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("x_fit", "y_fit", "x_validation", "y_validation")),
        spec,
        tmp_path / "pooled.json",
    )
    import xgboost

    grid = xgboost.DMatrix(np.array([[a, b, c] for a in range(8) for b in range(8) for c in (0, 7)], dtype=float))
    np.testing.assert_allclose(
        xgboost.Booster(model_file=str(federated.booster)).predict(grid),
        xgboost.Booster(model_file=str(pooled.booster)).predict(grid),
        atol=1e-6,
    )
    assert [r["round"] for r in federated.rounds] == list(range(1, 11))
    # Early stopping watches the consortium's validation rows together (XGBoost sums the metric across
    # workers), not any one institution's 50: each round's loss is the pooled validation rows' loss.
    np.testing.assert_allclose(
        [r["validation_loss"] for r in federated.rounds], [r["validation_loss"] for r in pooled.rounds], rtol=1e-5
    )


def test_a_worker_without_a_consortium_certificate_is_refused(tmp_path):
    from dataclasses import replace

    from fed_trees.spec import TreeSpec
    from fed_trees.training import TreeData, TreeTrainingFailed, run_certificates, train_federated
    from hostguard.loopback import isolation
    from hostguard.pki import init_ca, issue

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(100, 2)), rng.integers(0, 2, 100).astype(float)
    parts = [TreeData(n, x, y, x, y) for n in ("a", "b")]
    tls = run_certificates(tmp_path / "tls", ["a", "b"])
    stranger = tmp_path / "stranger"
    init_ca(stranger)
    forged = replace(tls, workers={**tls.workers, "b": issue(stranger, "b")})  # b's certificate: another CA's
    with pytest.raises(TreeTrainingFailed) as stopped:
        train_federated(
            parts, TreeSpec(rounds=3), tmp_path / "run", isolation=isolation(False), tls=forged, timeout=30
        )  # the stranger never joins: the run times out
    assert "nothing was registered" in str(stopped.value)


@pytest.mark.slow
def test_a_worker_killed_mid_training_stops_the_run_and_registers_nothing(small_consortium, tracking_uri):
    from fed_trees.training import TreeTrainingFailed
    from tasks.training import round_listener

    config = _config(
        _three(small_consortium),
        "trees_killed",
        {**TREES, "rounds": 200, "early_stopping": None, "learning_rate": 0.01},
    )
    killed = []

    def kill_a_worker(metrics):  # in the first attempt and in Prefect's retry of the training task
        if metrics.get("round") == 3:  # a round event (start and end have no round)
            workers = [
                pid
                for pid in descendants(os.getpid())
                if b"fed_trees.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ]
            os.kill(workers[-1], signal.SIGKILL)
            killed.append(workers[-1])

    with (
        round_listener(kill_a_worker),
        pytest.raises(TreeTrainingFailed, match="exited with code -9; the training stopped and nothing was registered"),
    ):
        retrain(config)
    assert len(killed) == 2 and MlflowClient(tracking_uri).search_model_versions("name='trees_killed'") == []
    assert not [
        pid for pid in descendants(os.getpid()) if b"fed_trees" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]  # every process stopped


@pytest.mark.slow
def test_engines_compete_under_one_policy_in_both_directions(small_consortium, tracking_uri):
    """A TFF MLP champion is replaced by an XGBoost challenger only when the policy says so."""
    consortium = _three(small_consortium)
    policy = {"promotion": {"metric": "roc_auc", "max_calibration_error": None, "max_institution_drop": None}}
    weak_mlp = {"rounds": 1, "client_learning_rate": 0.001, "model": {"kind": "mlp", "hidden_units": [4]}}
    champion = retrain(_config(consortium, "duel", weak_mlp, **policy))
    assert champion.registration.promoted
    trees = retrain(_config(consortium, "duel", TREES, **policy))
    assert trees.registration.promoted and trees.registration.reason.startswith("promoted: roc_auc ")
    assert trees.weighted["roc_auc"] > champion.weighted["roc_auc"]
    stump = {**TREES, "rounds": 1, "max_depth": 1, "learning_rate": 0.01}
    weak_trees = retrain(_config(consortium, "duel", stump, **policy))
    assert not weak_trees.registration.promoted
    assert weak_trees.registration.reason.startswith("champion v2 kept: roc_auc ")
    client = MlflowClient(tracking_uri)
    assert client.get_registered_model("duel").aliases["champion"] == 2
    tags = client.get_model_version("duel", "2").tags
    assert tags["training.engine"] == "xgboost" and tags["xgboost.max_depth"] == "3"
    assert tags["model.kind"] == "gradient_boosted_trees"
    run = client.get_run(trees.registration.run_id)
    assert "plots/feature_importance.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}


def test_trees_are_refused_with_differential_privacy():
    from flows.config import ConfigError

    with pytest.raises(ConfigError, match="privacy.mechanism record_level is not supported with engine: xgboost"):
        parse_config(
            {
                "model_name": "m",
                "institutions": [{"name": "a", "path": "a.csv"}],
                "training": TREES,
                "privacy": {"mechanism": "record_level", "noise_multiplier": 1.0},
            },
            Path("."),
            "run.yaml",
        )


@pytest.mark.slow
def test_fedrisk_score_and_mlflow_models_serve_agree_on_a_tree_model(
    small_consortium, tracking_uri, tmp_path, monkeypatch
):
    import json
    import sys
    import urllib.request

    from flows.cli import score
    from tests.conftest import cli_output, free_port, running, wait_for

    retrain(_config(_three(small_consortium), "trees_scored", TREES, promotion={"max_calibration_error": None}))
    cli_output(monkeypatch, width=200)
    applicants = tmp_path / "applicants.csv"
    pd.read_csv(small_consortium["dune_finance"]).head(200).drop(columns=["default.payment.next.month"]).to_csv(
        applicants, index=False
    )
    score.score(model="trees_scored@champion", input=applicants, output=tmp_path / "scored.csv", reasons=0)
    scored = pd.read_csv(tmp_path / "scored.csv")
    port, venv = free_port(), Path(sys.executable).parent
    with running(
        [
            str(venv / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/trees_scored@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{venv}{os.pathsep}{os.environ['PATH']}"},
        tmp_path / "serve.log",
    ) as server:

        def ready() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                return True
            except OSError:
                return False

        wait_for(ready, server, tmp_path / "serve.log", "mlflow models serve")
        rows = pd.read_csv(applicants)
        body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        served = [
            p["default_probability"]
            for p in json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
        ]
    np.testing.assert_allclose(served, scored["default_probability"], rtol=1e-6)
