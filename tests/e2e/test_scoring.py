"""Scoring with a registered version, each row on its own: a row that fails a check of the suite is written
unscored with its reason, the batch's rates are warnings, the file streams in chunks; and the same version
served by `mlflow models serve`."""

import json
import os
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import typer

from contract.schema import load_schema
from flows.cli import score
from institution.scoring import REJECTED_COLUMN, score_band, score_file
from tests.conftest import TEST_EXPECTATIONS_DIR, answers, cli_output, free_port, running, wait_for

LABEL_COLUMN = load_schema("credit_default").label.column


def test_score_bands_follow_the_master_scale():
    p = np.array([0.0, 0.02, 0.0201, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.41, 1.0])
    assert score_band(p).tolist() == ["A", "A", "B", "B", "C", "C", "D", "D", "E", "E", "F", "F"]


@pytest.fixture
def store(registered, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.tracking_uri)
    mlflow.set_tracking_uri(registered.tracking_uri)
    return registered


@pytest.fixture
def console(monkeypatch):
    buffer = cli_output(monkeypatch, width=300)
    return buffer


@pytest.fixture
def applicants(store, tmp_path) -> Path:
    """New rows to score: an institution's rows without the label, as a bank would send them."""
    path = tmp_path / "applicants.csv"
    pd.read_csv(store.data["birch_credit_union"]).head(300).drop(columns=[LABEL_COLUMN]).to_csv(path, index=False)
    return path


def test_score_writes_the_champions_probabilities_and_bands(store, applicants, tmp_path, console):
    output = tmp_path / "out" / "scores.csv"
    score.score(model=f"{store.name}@champion", input=applicants, output=output, reasons=0)

    scored = pd.read_csv(output)
    rows = pd.read_csv(applicants)
    assert scored.columns.tolist() == ["ID", "default_probability", "score_band", REJECTED_COLUMN]
    assert scored["ID"].tolist() == rows["ID"].tolist() and scored[REJECTED_COLUMN].isna().all()
    expected = mlflow.pyfunc.load_model(f"models:/{store.name}@champion").predict(rows)["default_probability"]
    np.testing.assert_allclose(scored["default_probability"], expected, rtol=1e-6)
    assert scored["score_band"].tolist() == score_band(scored["default_probability"].to_numpy()).tolist()
    text = console.getvalue()
    assert f"Scored 300 of 300 rows with {store.name} version 1 -> {output}" in text
    assert "Score bands: A (<= 0.02): " in text and "not scored" not in text


def test_each_row_that_fails_a_check_is_written_unscored_with_its_reason_and_the_rest_are_scored(
    store, applicants, tmp_path, console
):
    frame = pd.read_csv(applicants, dtype={"AGE": object, "SEX": object, "LIMIT_BAL": object})
    frame.loc[:4, "AGE"] = "300"
    frame.loc[5, "SEX"] = "7"
    frame.loc[6, "LIMIT_BAL"] = "lots"
    frame.loc[7, "AGE"] = None  # no missing value is allowed: the model has nothing to fill it with
    frame.loc[8, "AGE"] = "33.5"
    frame.loc[9, ["AGE", "SEX"]] = ["17", "0"]
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    output = tmp_path / "scores.csv"
    score.score(model=f"{store.name}@champion", input=bad, output=output, reasons=0)

    scored = pd.read_csv(output, dtype={REJECTED_COLUMN: str})
    assert scored[REJECTED_COLUMN].head(10).tolist() == [
        *["AGE between 18 and 100 (got '300')"] * 5,
        "SEX in code set [1, 2] (got '7')",
        "LIMIT_BAL is numeric (got 'lots')",
        "AGE has no missing values (missing)",
        "AGE is a whole number (got '33.5')",
        "SEX in code set [1, 2] (got '0'); AGE between 18 and 100 (got '17')",
    ]
    assert scored["default_probability"].head(10).isna().all() and scored["score_band"].head(10).isna().all()
    clean = pd.read_csv(applicants).iloc[10:]
    expected = mlflow.pyfunc.load_model(f"models:/{store.name}@champion").predict(clean)["default_probability"]
    np.testing.assert_allclose(scored["default_probability"].iloc[10:], expected, rtol=1e-6)
    assert scored[REJECTED_COLUMN].iloc[10:].isna().all()
    text = console.getvalue()
    assert f"Scored 290 of 300 rows with {store.name} version 1 -> {output}" in text
    assert (
        "10 rows not scored (their reasons are in column not_scored_because):\n"
        "  - AGE between 18 and 100: 6 rows\n" in text
    )
    assert "  - SEX in code set [1, 2]: 2 rows\n  - LIMIT_BAL is numeric: 1 rows\n" in text


def test_one_application_is_scored_on_its_own_and_chunks_change_nothing(store, applicants, tmp_path):
    one = tmp_path / "one.csv"
    pd.read_csv(applicants).iloc[[17]].to_csv(one, index=False)
    alone = score_file(
        store.tracking_uri, store.name, "champion", None, one, tmp_path / "one_out.csv", TEST_EXPECTATIONS_DIR
    )
    assert (alone.rows, alone.scored, alone.warnings, alone.rejected) == (1, 1, [], {})
    whole = score_file(
        store.tracking_uri, store.name, "champion", None, applicants, tmp_path / "whole.csv", TEST_EXPECTATIONS_DIR
    )
    done = []
    chunked = score_file(
        store.tracking_uri,
        store.name,
        "champion",
        None,
        applicants,
        tmp_path / "chunked.csv",
        TEST_EXPECTATIONS_DIR,
        chunk_rows=7,
        progress=done.append,
    )
    assert done == [*range(7, 300, 7), 300] and chunked.bands == whole.bands
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "chunked.csv"), pd.read_csv(tmp_path / "whole.csv"))
    assert pd.read_csv(tmp_path / "one_out.csv")["default_probability"].iloc[0] == pytest.approx(
        pd.read_csv(tmp_path / "whole.csv")["default_probability"].iloc[17],
        rel=1e-6,  # float32: one row or many
    )
    pd.read_csv(applicants).to_parquet(tmp_path / "applicants.parquet")  # Parquet streams in row batches too
    score_file(
        store.tracking_uri,
        store.name,
        "champion",
        None,
        tmp_path / "applicants.parquet",
        tmp_path / "from_parquet.csv",
        TEST_EXPECTATIONS_DIR,
        chunk_rows=64,
    )
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "from_parquet.csv"), pd.read_csv(tmp_path / "whole.csv"))


def test_a_file_that_is_not_the_schemas_table_is_refused_whole_and_nothing_is_written(
    store, applicants, tmp_path, console
):
    frame = pd.read_csv(applicants)
    output = tmp_path / "scores.csv"
    frame.drop(columns=["PAY_AMT6"]).to_csv(tmp_path / "narrow.csv", index=False)
    with pytest.raises(typer.Exit) as stop:
        score.score(model=f"{store.name}@champion", input=tmp_path / "narrow.csv", output=output, reasons=0)
    assert stop.value.exit_code == 1
    assert (
        f"{tmp_path / 'narrow.csv'}: rejected, nothing was scored. Failed checks:\n"
        "  - column PAY_AMT6 is present: failed\n" in console.getvalue()
    )
    cut = tmp_path / "cut.csv"
    text = applicants.read_text()
    cut.write_text(text[: len(text) - 40])  # a transfer that stopped mid-line
    with pytest.raises(typer.Exit) as stop:
        score.score(model=f"{store.name}@champion", input=cut, output=output, reasons=0)
    assert stop.value.exit_code == 1
    assert f"{cut}: last line incomplete (it has " in console.getvalue()
    repeated = tmp_path / "repeated.csv"  # a column named twice (a careless export), its own file: named whole
    repeated.write_text(text.replace("\n", ",LIMIT_BAL\n", 1))
    with pytest.raises(typer.Exit) as stop:
        score.score(model=f"{store.name}@champion", input=repeated, output=output, reasons=0)
    assert stop.value.exit_code == 1
    assert f"{repeated}: column LIMIT_BAL appears 2 times in the header (fields 2, 25): each column must be" in (
        console.getvalue().replace("\n", " ")
    )
    assert not output.exists() and not list(tmp_path.glob(".*partial"))


def test_an_output_that_cannot_be_written_is_one_line_and_leaves_nothing(store, applicants, tmp_path, console):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output's folder should be")
    with pytest.raises(typer.Exit) as stop:
        score.score(model=f"{store.name}@champion", input=applicants, output=blocked / "scores.csv", reasons=0)
    assert stop.value.exit_code == 1
    assert f"{blocked / 'scores.csv'}: cannot be written (" in console.getvalue()
    assert "Traceback" not in console.getvalue() and blocked.read_text().startswith("a file")


def test_a_batch_where_no_row_passes_is_written_with_reasons_and_exits_1(store, applicants, tmp_path, console):
    frame = pd.read_csv(applicants).head(3)
    frame["AGE"] = 5
    frame.to_csv(tmp_path / "young.csv", index=False)
    output = tmp_path / "scores.csv"
    with pytest.raises(typer.Exit) as stop:
        score.score(model=f"{store.name}@champion", input=tmp_path / "young.csv", output=output, reasons=0)
    assert stop.value.exit_code == 1
    assert pd.read_csv(output)[REJECTED_COLUMN].tolist() == ["AGE between 18 and 100 (got '5')"] * 3
    assert f"Scored 0 of 3 rows with {store.name} version 1" in console.getvalue()


def test_unknown_model_and_bad_reference_are_clear(store, applicants, tmp_path, console):
    with pytest.raises(typer.Exit) as stop:
        score.score(model=f"{store.name}@production", input=applicants, output=tmp_path / "s.csv")
    assert stop.value.exit_code == 1
    assert f"{store.name}@production: no such model version in {store.tracking_uri}" in console.getvalue()
    assert f"; aliases: {store.name}@challenger (version " in console.getvalue()  # what does exist
    assert f"{store.name}@champion (version " in console.getvalue()
    with pytest.raises(typer.Exit) as stop:
        score.score(model=store.name, input=applicants, output=tmp_path / "s.csv")
    assert stop.value.exit_code == 2 and "must be NAME@ALIAS" in console.getvalue()
    with pytest.raises(typer.Exit) as stop:  # the scorer's own file: named by its path, not as an institution
        score.score(model=f"{store.name}@champion", input=tmp_path / "absent.csv", output=tmp_path / "s.csv")
    assert stop.value.exit_code == 1 and f"\n{tmp_path / 'absent.csv'}: file not found" in console.getvalue()
    assert "institution" not in console.getvalue().splitlines()[-1]


def test_mlflow_models_serve_scores_as_fedrisk_score_does(store, applicants, tmp_path, console):
    """The README's serving command, run once: same version, same probabilities over HTTP."""
    output = tmp_path / "scores.csv"
    score.score(model=f"{store.name}@champion", input=applicants, output=output, reasons=0)
    port = free_port()
    venv_bin = Path(sys.executable).parent  # `mlflow models serve` execs uvicorn from PATH, as under `uv run`
    log = tmp_path / "serve.log"
    with running(
        [
            str(venv_bin / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{store.name}@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        {
            **os.environ,
            "MLFLOW_TRACKING_URI": store.tracking_uri,
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        log,
    ) as server:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/ping"), server, log, "mlflow models serve")
        rows = pd.read_csv(applicants)
        body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        predictions = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
    served = [p["default_probability"] for p in predictions]
    np.testing.assert_allclose(served, pd.read_csv(output)["default_probability"], rtol=1e-5)


def test_ids_that_a_spreadsheet_would_run_as_formulas_are_written_escaped(store, applicants, tmp_path, console):
    """OWASP's rule for CSV injection: the output a credit officer opens shows `=HYPERLINK(...)`, never runs it."""
    hostile = ["=cmd|' /C calc'!A0", '=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB"]
    rows = pd.read_csv(applicants).head(len(hostile) + 1)
    rows["ID"] = [*hostile, "ordinary-7"]
    given = tmp_path / "hostile.csv"
    rows.to_csv(given, index=False)
    output = tmp_path / "scores.csv"
    score.score(model=f"{store.name}@champion", input=given, output=output, reasons=0)

    cells = [line.split(",")[0] for line in output.read_text().splitlines()[1:]]
    written = pd.read_csv(output, dtype={"ID": str}, keep_default_na=False)["ID"].tolist()
    assert written == ["'" + value for value in hostile] + ["ordinary-7"], cells


def test_the_model_declares_a_pinned_environment(store):
    """What `mlflow models serve` or a bank's own build installs: what scoring imports, each pinned, and a pinned
    pip in conda.yaml (MLflow writes a bare `pip` when the training environment has none)."""
    import importlib.metadata

    import yaml

    model = Path(mlflow.artifacts.download_artifacts(f"models:/{store.name}@champion"))
    requirements = (model / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} == {"tensorflow", "mlflow", "pandas", "numpy"}
    assert all("==" in r for r in requirements), requirements
    conda = yaml.safe_load((model / "conda.yaml").read_text())
    assert [d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("pip")] == [
        f"pip<={importlib.metadata.version('pip')}"
    ]
