"""The `fedrisk` CLI as a user runs it (in-process, sharing the session's Prefect API and TFF)."""

import shutil

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from flows.settings import PROJECT_ROOT

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"}, catch_exceptions=False)


def test_data_synth_writes_one_folder_per_institution(tmp_path):
    result = _invoke("data", "synth", "--out", str(tmp_path), "--institutions", "3", "--rows-scale", "0.1")
    assert result.exit_code == 0
    assert sorted(p.parent.name for p in tmp_path.glob("*/credit.csv")) == ["alder_bank", "birch_credit_union", "cedar_savings"]
    assert len(pd.read_csv(tmp_path / "cedar_savings" / "credit.csv")) == 400


def test_bad_config_exits_2_naming_the_field(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model_name: m\ninstitutions: [{name: a, path: a.csv}]\ntraining: {rounds: -3}\n")
    result = _invoke("retrain", "--config", str(config))
    assert result.exit_code == 2
    assert "training.rounds: Input should be greater than or equal to 1 (got -3)" in result.output


@pytest.mark.usefixtures("prefect_api")
def test_validate_shows_the_quarantined_institution_and_exits_1_below_quorum(tmp_path, small_consortium):
    broken = tmp_path / "dune.csv"
    broken.write_bytes(small_consortium["dune_finance"].read_bytes()[:50])  # cut inside the header
    config = tmp_path / "run.yaml"
    config.write_text(
        "model_name: m\nquorum: 2\ninstitutions:\n"
        f"  - {{name: cedar_savings, path: {small_consortium['cedar_savings']}}}\n"
        f"  - {{name: dune_finance, path: {broken}}}\n"
    )
    result = _invoke("validate", "--config", str(config))
    assert result.exit_code == 1
    assert "cedar_savings" in result.output and "admitted" in result.output
    assert "excluded" in result.output and "column PAY_2 is present: failed" in result.output
    assert "at least 200 rows: observed 0" in result.output
    assert "1 of 2 institutions passed; quorum is 2" in result.output

    config.write_text(config.read_text().replace("quorum: 2", "quorum: 1"))
    result = _invoke("validate", "--config", str(config))
    assert result.exit_code == 0 and "1 of 2 institutions passed; quorum 1 met" in result.output


@pytest.mark.usefixtures("prefect_api")
def test_demo_twice_champion_then_challenger(tmp_path, tracking_uri):
    first = _invoke("demo", "--data-dir", str(tmp_path / "demo"))
    assert first.exit_code == 0, first.output
    assert "Synthesized 4 institutions" in first.output
    assert "Registered credit_default_demo version 1 (aliases: challenger, champion)" in first.output
    assert "Champion: no champion yet: promoted with roc_auc 0." in first.output

    second = _invoke("demo", "--data-dir", str(tmp_path / "demo"))
    assert second.exit_code == 0, second.output
    assert "Synthesized" not in second.output
    assert "Registered credit_default_demo version 2 (aliases: challenger)" in second.output
    assert "not better, champion kept" in second.output
    aliases = MlflowClient().get_registered_model("credit_default_demo").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "1", "challenger": "2"}
