import math
import os
import signal
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.evaluation import InstitutionEvaluation
from tasks.config import PromotionConfig
from tasks.registry import decide_promotion
from tasks.versions import REGISTRATION_TAG
from tests.conftest import FEDRISK, WatchedProcess, answers, free_port, running, wait_for, write_config
from tests.test_production_stores import BIN, POSTGRES, _UNREACHABLE, _database

POLICY = {"metric": "roc_auc", "min_improvement": 0.0, "max_institution_drop": 0.01, "max_calibration_error": 0.05}


def _evaluations(challenger: dict[str, float], champion: dict[str, float] | None = None, ece: float = 0.02,
                 metric: str = "roc_auc") -> list[InstitutionEvaluation]:
    """Institutions of 100 holdout rows each; calibration bins whose pooled ECE is `ece`."""
    evaluations = []
    for name, value in challenger.items():
        metrics = {"challenger": {metric: value}}
        if champion is not None:
            metrics["champion"] = {metric: champion[name]}
        calibration = {"examples": [100.0], "predicted_sum": [20.0 + 100 * ece], "positives": [20.0]}
        evaluations.append(InstitutionEvaluation(name, 100, 20, metrics,
                                                 curves={"challenger": {"calibration": calibration}}))
    return evaluations


def test_first_model_is_promoted_when_calibrated():
    decision = decide_promotion(PromotionConfig(**POLICY), _evaluations({"a": 0.75, "b": 0.77}), None)
    assert decision.promoted
    assert decision.checks == ["pass: no champion yet; challenger roc_auc 0.7600",
                               "pass: pooled ECE 0.0200 below 0.05"]
    assert decision.reason == "promoted: no champion yet; challenger roc_auc 0.7600"


def test_first_model_that_is_badly_calibrated_is_not_made_champion():
    decision = decide_promotion(PromotionConfig(**POLICY), _evaluations({"a": 0.75}, ece=0.08), None)
    assert not decision.promoted
    assert decision.reason == "not promoted, no champion set: pooled ECE 0.0800 not below 0.05"


def test_better_on_average_but_worse_for_one_institution_is_refused():
    decision = decide_promotion(PromotionConfig(**POLICY), _evaluations({"a": 0.80, "b": 0.70}, {"a": 0.74, "b": 0.72}), "3")
    assert not decision.promoted
    assert decision.checks[0] == ("pass: roc_auc 0.7500 vs champion v3 0.7300 on the same holdouts "
                                  "(+0.0200; needs > 0)")
    assert decision.checks[2] == ("fail: institutions worse than under the champion by more than 0.01 "
                                  "on roc_auc: b worse by 0.0200")
    assert decision.reason == ("champion v3 kept: institutions worse than under the champion by more than 0.01 "
                               "on roc_auc: b worse by 0.0200")


def test_promoted_when_better_everywhere_within_the_guardrails():
    decision = decide_promotion(PromotionConfig(**POLICY), _evaluations({"a": 0.76, "b": 0.715}, {"a": 0.74, "b": 0.72}), "3")
    assert decision.promoted
    assert decision.checks == [
        "pass: roc_auc 0.7375 vs champion v3 0.7300 on the same holdouts (+0.0075; needs > 0)",
        "pass: pooled ECE 0.0200 below 0.05",
        "pass: no institution worse than under the champion by more than 0.01 on roc_auc (largest drop: b 0.0050)",
    ]


@pytest.mark.parametrize(
    "policy, challenger, champion, promoted, first_check",
    [
        ({"min_improvement": 0.01}, 0.745, 0.74, False,
         "fail: roc_auc 0.7450 vs champion v1 0.7400 on the same holdouts (+0.0050; needs > 0 and >= 0.01)"),
        ({"min_improvement": 0.01}, 0.755, 0.74, True,
         "pass: roc_auc 0.7550 vs champion v1 0.7400 on the same holdouts (+0.0150; needs > 0 and >= 0.01)"),
        ({}, 0.74, 0.74, False, "fail: roc_auc 0.7400 vs champion v1 0.7400 on the same holdouts (+0.0000; needs > 0)"),
        ({"metric": "log_loss"}, 0.40, 0.42, True,
         "pass: log_loss 0.4000 vs champion v1 0.4200 on the same holdouts (+0.0200; needs > 0)"),
        ({"metric": "brier"}, 0.13, 0.12, False,
         "fail: brier 0.1300 vs champion v1 0.1200 on the same holdouts (-0.0100; needs > 0)"),
        ({"metric": "ks"}, math.nan, 0.3, False, "fail: challenger ks is undefined"),
    ],
)
def test_primary_metric_and_minimum_improvement(policy, challenger, champion, promoted, first_check):
    policy = {**POLICY, "max_institution_drop": None, **policy}
    metric = policy["metric"]
    decision = decide_promotion(PromotionConfig(**policy), _evaluations({"a": challenger}, {"a": champion}, metric=metric), "1")
    assert decision.promoted is promoted
    assert decision.checks[0] == first_check


def test_a_champion_that_could_not_be_scored_is_kept():
    decision = decide_promotion(PromotionConfig(**POLICY), _evaluations({"a": 0.9}), "2")
    assert not decision.promoted
    assert decision.reason == "champion v2 kept: champion v2 could not be compared on the same data (its features differ)"


def test_guardrails_can_be_turned_off():
    policy = {**POLICY, "max_institution_drop": None, "max_calibration_error": None}
    decision = decide_promotion(PromotionConfig(**policy), _evaluations({"a": 0.9, "b": 0.5}, {"a": 0.6, "b": 0.7}, ece=0.3), "1")
    assert decision.promoted and len(decision.checks) == 1


def test_a_challenger_trained_without_an_institution_lost_mid_training_is_not_promoted_by_default():
    lost = {"c": "left out from round 3: institution 'c': unreachable at 10.0.0.3:7100",
            "d": "quarantined at the start of the training: institution 'd' agreed to at most 3 rounds"}
    decision = decide_promotion(PromotionConfig(**POLICY), _evaluations({"a": 0.9}), "2", lost)
    assert not decision.promoted
    assert decision.reason.endswith("trained and evaluated without c, lost mid-training "
                                    "(promotion.promote_with_lost_institutions is false: a person decides)")
    allowed = decide_promotion(PromotionConfig(**POLICY, promote_with_lost_institutions=True),
                               _evaluations({"a": 0.9}), None, lost)
    assert allowed.promoted  # and one quarantined at the start is like a failed validation: no reason to hold


def _registration_rows(database: str, model: str) -> dict[str, dict]:
    """Each version's registration state, aliases and MLflow run, read from the tracking server's own database
    (its server may be down)."""
    import psycopg

    with psycopg.connect(database) as connection:
        versions = connection.execute("SELECT version, run_id FROM model_versions WHERE name = %s", (model,)).fetchall()
        tags = dict(connection.execute("SELECT version, value FROM model_version_tags WHERE name = %s AND key = %s",
                                       (model, REGISTRATION_TAG)).fetchall())
        aliases = connection.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s",
                                     (model,)).fetchall()
    return {str(v): {"registration": tags.get(v), "run_id": run, "aliases": sorted(a for a, n in aliases if n == v)}
            for v, run in versions}


@pytest.mark.slow
@pytest.mark.skipif(_UNREACHABLE is not None, reason=f"no PostgreSQL server at {POSTGRES} ({_UNREACHABLE}); set "
                                                       f"FEDRISK_TEST_POSTGRES_URL (`.ci/run` starts one)")
def test_a_tracking_server_lost_while_registering_leaves_no_half_version_and_the_retry_settles_it(
        prefect_api, small_consortium, tmp_path):
    """The MLflow server (on PostgreSQL, as in production) killed the moment the new version's row exists: nothing
    half-registered is visible (no alias, marked unfinished), and once the server is back the registration's retry
    deletes that version, ends its MLflow run FAILED and registers the model whole."""
    import uuid

    database, port = _database(f"mlflow_{uuid.uuid4().hex[:8]}"), free_port()
    url = f"http://127.0.0.1:{port}"
    server = [str(BIN / "mlflow"), "server", "--backend-store-uri", database, "--serve-artifacts",
              "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
              "--workers", "1"]
    two = {name: small_consortium[name] for name in ("cedar_savings", "dune_finance")}  # the smallest: quick
    config = write_config(tmp_path / "m.yaml", two, quorum=2, training={"rounds": 2},
                          promotion={"max_calibration_error": None})
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": url, "COLUMNS": "200",
           "FEDRISK_RUNS_DIR": str(tmp_path / "runs"), "FEDRISK_LOG_FILE": str(tmp_path / "fedrisk.log"),
           "FEDRISK_REGISTRY_RETRY_SECONDS": "60",  # 2, 4, 8, 16, 32 s apart: a restart takes 5-20 s
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # each call fails at once; the task's retries back off
    with running(server, env, tmp_path / "server.log") as tracking:
        wait_for(lambda: answers(f"{url}/health"), tracking, tmp_path / "server.log", "mlflow server")
        retraining = WatchedProcess([FEDRISK, "retrain", "--config", str(config)], env)
        try:
            retraining.until("registering the new version of m", timeout=300)
            while not _registration_rows(database, "m"):
                assert retraining.process.poll() is None, "".join(retraining.seen)
                time.sleep(0.01)
            os.killpg(tracking.pid, signal.SIGKILL)  # the server gone between the version's row and its aliases
            retraining.until("the MLflow run of this registration could not be ended", timeout=120)
            [(version, half)] = _registration_rows(database, "m").items()
            assert half["registration"] in ("incomplete", "aliases pending") and half["aliases"] == [], half
            with running(server, env, tmp_path / "server-again.log") as again:  # back, within the retries
                wait_for(lambda: answers(f"{url}/health"), again, tmp_path / "server-again.log", "mlflow server")
                assert retraining.end(timeout=400) == 0, "".join(retraining.seen)[-3000:]
                output = "".join(retraining.seen)
                assert f"an earlier registration of m had not finished: version {version} deleted" in output
                client = MlflowClient(url)
                [registered] = client.search_model_versions("name='m'")
                assert registered.version != version and registered.tags[REGISTRATION_TAG] == "complete"
                assert str(client.get_model_version_by_alias("m", "champion").version) == str(registered.version)
                assert client.get_run(half["run_id"]).info.status == "FAILED"  # never left RUNNING
                assert client.get_run(registered.run_id).info.status == "FINISHED"
        finally:
            retraining.kill()
