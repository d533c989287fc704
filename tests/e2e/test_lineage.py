"""Lineage: a registered version's tags trace it to its flow run, code, config, suite and data."""

import subprocess
from pathlib import Path

import mlflow
import pytest
import typer

from flows.cli import lineage
from flows.settings import PROJECT_ROOT
from tests.conftest import cli_output
from tracking.lineage import config_digest, parse_reference, suite_digest


@pytest.fixture
def store(registered, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.tracking_uri)
    mlflow.set_tracking_uri(registered.tracking_uri)
    return registered


def test_a_version_carries_its_lineage(store):
    version = mlflow.MlflowClient().get_model_version(store.name, "1")
    tags = version.tags
    head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert tags["git.commit"] == head.stdout.strip() and tags["git.dirty"] in ("true", "false")
    # The test harness is a real Prefect server on loopback, so the run has a UI page.
    assert tags["prefect.flow_run_url"].endswith(f"/runs/flow-run/{tags['prefect.flow_run_id']}")
    assert tags["config.sha256"] == config_digest(store.config.plain())
    assert tags["suite.name"] == "credit_default_v2"
    from flows.settings import Settings

    assert tags["suite.sha256"] == suite_digest(Settings().expectations_dir, "credit_default_v2")
    schema = store.config.data_schema
    assert (tags["schema.name"], tags["schema.version"], tags["schema.sha256"]) == (
        "credit_default",
        "2",
        schema.fingerprint(),
    )
    assert tags["security.worker_isolation"] == "loopback-bind (LD_PRELOAD)"
    assert tags["institutions"] == ",".join(store.data)
    for report in store.first.validation:
        assert tags[f"institution.{report.institution}.digest"] == report.digest[:16]
        assert tags[f"institution.{report.institution}.rows"] == str(report.rows)
        assert tags[f"institution.{report.institution}.validation"] == "passed (126 checks, 0 failed)"
    assert tags["training.algorithm"] == "fedavg" and tags["privacy.mechanism"] == "none"
    assert tags["simulation"] == "true"
    assert tags["promotion.decision"] == "promoted"
    assert tags["model_card"] == f"runs:/{version.run_id}/model_card.html"  # resolves wherever the store is


def test_fedrisk_lineage_resolves_every_link_it_prints(store, monkeypatch):
    buffer = cli_output(monkeypatch, width=300)
    lineage.lineage(reference=f"{store.name}@champion")
    lines = buffer.getvalue().splitlines()
    assert lines[0] == f"{store.name}@champion -> {store.name} version 1"
    links = lines[1:]
    assert links and all(line.strip().startswith("ok") for line in links), "\n".join(links)
    what = [line.split(":", 1)[0].strip().removeprefix("ok").strip() for line in links]
    assert what == [
        "model",
        "MLflow run",
        "model card",
        "Prefect flow run",
        "code",
        "config",
        "schema",
        "suite",
        *[f"institution {name}" for name in store.data],
        "training",
        "privacy",
        "worker isolation",
        "promotion",
    ]
    flow_run_id = mlflow.MlflowClient().get_model_version(store.name, "1").tags["prefect.flow_run_id"]
    [flow_run] = [line for line in links if "Prefect flow run:" in line]
    assert f"Prefect flow run: {flow_run_id}  (credit_registered v1 manual, Completed; http" in flow_run
    [privacy] = [line for line in links if " privacy:" in line]
    assert privacy.strip() == "ok  privacy: none  (no differential privacy)"
    # Every runs:/ reference it printed is an artifact that downloads.
    for line in links:
        for word in line.split():
            if word.startswith("runs:/") and word.count("/") > 2:
                assert mlflow.artifacts.download_artifacts(word)


def test_lineage_reports_a_link_that_no_longer_resolves(store, monkeypatch, tmp_path):
    import shutil

    from flows.settings import Settings

    changed = shutil.copytree(Settings().expectations_dir, tmp_path / "expectations")
    suite = changed / "gx" / "expectations" / "credit_default_v2.json"
    suite.write_text(suite.read_text().replace('"min_value": 200', '"min_value": 100'))
    monkeypatch.setenv("FEDRISK_EXPECTATIONS_DIR", str(changed))
    buffer = cli_output(monkeypatch, width=300)
    with pytest.raises(typer.Exit) as stop:
        lineage.lineage(reference=f"{store.name}/2")
    assert stop.value.exit_code == 1
    [suite_line] = [line for line in buffer.getvalue().splitlines() if " suite: " in line]
    assert suite_line.strip().startswith("UNRESOLVED") and "the committed suite has changed since" in suite_line


@pytest.mark.parametrize(
    "reference, parsed", [("credit@champion", ("credit", "champion", None)), ("credit/12", ("credit", None, "12"))]
)
def test_references(reference, parsed):
    assert parse_reference(reference) == parsed


@pytest.mark.parametrize("reference", ["credit", "credit@", "@champion", "credit/v2"])
def test_bad_references_say_what_is_expected(reference):
    with pytest.raises(ValueError, match="must be NAME@ALIAS .* or NAME/VERSION"):
        parse_reference(reference)


@pytest.mark.parametrize("state, sound", [("Completed", True), ("Failed", False), ("Crashed", False)])
def test_a_version_whose_flow_run_failed_after_registering_is_not_sound(tmp_path, monkeypatch, state, sound):
    """A run that registered a version and then failed (a lost lock, a crash) is no sound origin for it."""
    import sqlite3

    from tracking.lineage import _flow_run_in_local_database

    database = tmp_path / "prefect.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE flow_run (id TEXT, name TEXT, state_name TEXT)")
        connection.execute("INSERT INTO flow_run VALUES ('f1', 'retrain-credit', ?)", (state,))
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{database}")
    resolved, detail = _flow_run_in_local_database("f1")
    assert resolved is sound
    assert detail.startswith(f"retrain-credit, {state} (local Prefect database)")
    assert detail.endswith("the run that registered this version did not complete") is not sound


def test_a_schema_suite_or_config_file_git_does_not_track_makes_the_code_dirty_and_is_never_as_committed(tmp_path):
    """`git status --untracked-files=no` looked clean while the schema a model was trained on existed nowhere in
    git: the run's own input files count, and lineage names them."""
    from contract.schema import load_schema
    from tracking.lineage import NOT_COMMITTED, _schema_link, git_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "tracked.yaml").write_text("a: 1\n")
    git("add", "tracked.yaml")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "first")
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "mine.yaml").write_text("b: 2\n")
    commit, dirty, uncommitted = git_state(tmp_path, [tmp_path / "tracked.yaml"])
    assert len(commit) == 40 and not dirty and uncommitted == []
    assert git_state(tmp_path, [tmp_path / "tracked.yaml", tmp_path / "schemas" / "mine.yaml", Path("/etc/hosts")]) == (
        commit,
        True,
        ["schemas/mine.yaml"],
    )  # a file outside the repository is recorded by its digest

    schema = load_schema("credit_default")
    tags = {"schema.name": schema.name, "schema.version": str(schema.version), "schema.sha256": schema.fingerprint()}
    assert _schema_link(tags).resolved and "as committed" in _schema_link(tags).detail
    unsure = _schema_link({**tags, "git.uncommitted_inputs": "schemas/credit_default.yaml"})
    assert not unsure.resolved and unsure.detail.endswith(NOT_COMMITTED)
