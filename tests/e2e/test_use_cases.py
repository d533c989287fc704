"""The shipped use cases end to end on the real data in ../shared/data: credit scoring on the German
credit data (a logistic-regression scorecard over categorical bureau attributes) and card-fraud
detection on the ULB subset (a class-weighted MLP), each split into three banks as the configs say."""

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from contract.schema import load_schema
from contract.synthetic import split_file
from flows.config import load_config
from flows.retrain import retrain
from flows.settings import PROJECT_ROOT
from tests.conftest import SHARED_DATA, TEST_EXPECTATIONS_DIR

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]
SOURCES = {
    "german_credit": SHARED_DATA / "german_credit" / "germancredit.csv",
    "card_fraud": SHARED_DATA / "ulb_fraud_subset" / "creditcard_subset.csv",
}


def _use_case(name: str, tmp_path: Path, monkeypatch):
    """The shipped config over a fresh split of the real file, and a fresh MLflow store."""
    if not SOURCES[name].is_file():
        pytest.skip(f"real data for {name} not found at {SOURCES[name]} (../shared/data is absent)")
    schema = load_schema(name)
    split_file(
        pd.read_csv(SOURCES[name]),
        schema.label.column,
        ["bank_a", "bank_b", "bank_c"],
        seed=0,
        id_column=schema.id,
        out_dir=tmp_path / "data",
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    config = load_config(PROJECT_ROOT / "configs" / f"{name}.yaml", expectations_dir=TEST_EXPECTATIONS_DIR)
    for institution in config.institutions:
        institution.path = tmp_path / "data" / f"{institution.name}.csv"
    return config, tmp_path / "mlruns" / "artifacts"


def _artifact_texts(root: Path):
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "data_docs" not in p.parts):
        yield str(path), path.read_bytes().decode("latin-1")


def test_german_credit_scorecard_registers_scores_with_reasons_and_leaks_no_rare_level(tmp_path, monkeypatch):
    from institution.scoring import score_file

    config, artifacts = _use_case("german_credit", tmp_path, monkeypatch)
    summary = retrain(config)
    assert all(r.passed for r in summary.validation) and summary.registration.version == "1"
    assert summary.weighted["roc_auc"] > 0.70  # about 100 holdout rows per bank: noisy (benchmark: 3 seeds)
    client = MlflowClient()
    run = client.get_run(summary.registration.run_id)
    points = pd.read_csv(client.download_artifacts(run.info.run_id, "scorecard/points_table.csv"))
    assert points.iloc[0]["feature"] == "(base points)"
    assert {"purpose", "age_in_years", "savings_account_and_bonds"} <= set(points["feature"])
    assert "(missing)" in set(points.loc[points["feature"] == "savings_account_and_bonds", "attribute"])
    version = client.get_model_version(config.model_name, "1")
    assert version.tags["schema.name"] == "german_credit" and version.tags["schema.version"] == "1"

    # New applicants: one with a purpose the model never saw, one whose age and savings are missing.
    applicants = pd.read_csv(config.institutions[0].path).head(20).drop(columns=["creditability"])
    applicants.loc[0, "purpose"] = "crypto mining"
    applicants.loc[1, ["age_in_years", "savings_account_and_bonds"]] = np.nan
    applicants.to_csv(tmp_path / "applicants.csv", index=False)
    result = score_file(
        os.environ["MLFLOW_TRACKING_URI"],
        config.model_name,
        "champion",
        None,
        tmp_path / "applicants.csv",
        tmp_path / "scored.csv",
        TEST_EXPECTATIONS_DIR,
        reasons=3,
    )
    assert result.rows == result.scored == 20
    assert (
        "purpose: 1 of 20 rows have a level the model was not trained on, scored as '(other)' (e.g. "
        "'crypto mining')" in result.warnings
    )
    scored = pd.read_csv(tmp_path / "scored.csv")
    assert list(scored.columns[:4]) == ["ID", "bad_probability", "score_band", "score_points"]
    assert np.isfinite(scored["bad_probability"]).all() and scored["bad_probability"].between(0, 1).all()
    scaling = (20 / np.log(2), 600 - 20 / np.log(2) * np.log(50))
    odds_points = scaling[1] + scaling[0] * np.log((1 - scored["bad_probability"]) / scored["bad_probability"])
    np.testing.assert_allclose(scored["score_points"], odds_points, atol=0.06)  # points are the odds, rescaled
    assert scored["reason_1"].fillna("").map(lambda r: r in ("", *config.data_schema.features)).all()
    # One application on its own, its age missing: scored (the model fills it); the batch's rate only warned of.
    applicants.iloc[[1]].to_csv(tmp_path / "one.csv", index=False)
    one = score_file(
        os.environ["MLFLOW_TRACKING_URI"],
        config.model_name,
        "champion",
        None,
        tmp_path / "one.csv",
        tmp_path / "one_scored.csv",
        TEST_EXPECTATIONS_DIR,
    )
    assert one.scored == 1 and one.rejected == {}
    assert (
        "age_in_years missing in 1 of 1 rows (100%), more than the 5% its training data allowed; each was "
        "filled as the model fills a missing value" in one.warnings
    )
    assert pd.read_csv(tmp_path / "one_scored.csv")["bad_probability"].iloc[0] == pytest.approx(
        scored["bad_probability"].iloc[1], rel=1e-9
    )

    # Levels held by fewer than the schema's 10 rows in the whole consortium never appear in an artifact.
    training = pd.concat(pd.read_csv(i.path) for i in config.institutions)
    rare = [
        level
        for column in config.data_schema.categorical()
        for level, n in training[column].value_counts().items()
        if n < config.data_schema.rare_level_min_rows
    ]
    assert "retraining" in rare
    for name, text in _artifact_texts(artifacts):
        found = [level for level in rare if re.search(rf"(?<![\w/ ]){re.escape(level)}(?![\w/])", text)]
        assert not found, f"{name} names rare levels {found}"


def test_card_fraud_mlp_registers_on_pr_auc_with_recall_at_the_alert_rate(tmp_path, monkeypatch):
    config, artifacts = _use_case("card_fraud", tmp_path, monkeypatch)
    summary = retrain(config)
    assert all(r.passed for r in summary.validation) and summary.registration.promoted
    assert summary.weighted["pr_auc"] > 0.88 and summary.weighted["recall_at_alert_rate"] > 0.8
    assert summary.registration.checks[0].startswith("pass: no champion yet; challenger pr_auc ")
    run = MlflowClient().get_run(summary.registration.run_id)
    assert run.data.metrics["challenger/weighted/recall_at_alert_rate"] == pytest.approx(
        summary.weighted["recall_at_alert_rate"]
    )
    assert run.data.params["evaluation.alert_rate"] == "0.1"
    # No transaction leaves its bank: no run of five consecutive feature values of any input row.
    windows = set()
    for institution in config.institutions:
        values = pd.read_csv(institution.path).drop(columns=["ID", "Class"]).to_numpy()
        windows |= {tuple(np.round(row[i : i + 5], 4)) for row in values for i in range(0, len(row) - 4, 5)}
    number = re.compile(r"-?\d+\.\d+")
    for name, text in _artifact_texts(artifacts):
        numbers = [round(float(n), 4) for n in number.findall(text)]
        assert not any(tuple(numbers[i : i + 5]) in windows for i in range(len(numbers) - 4)), name
