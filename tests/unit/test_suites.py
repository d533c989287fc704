"""contract.suites: every schema version's suite is committed, and is exactly what the schema describes."""

import json

import pytest

from contract.schema import available_schemas, load_schema
from contract.suites import expected_checks, require_current_suite, suite_path, write_suite
from flows.settings import PROJECT_ROOT

EXPECTATIONS = PROJECT_ROOT / "expectations"


@pytest.mark.parametrize("name", available_schemas())
def test_the_committed_suite_is_the_one_the_schema_describes(name):
    require_current_suite(load_schema(name), EXPECTATIONS)


def test_credit_default_keeps_its_version_1_checks_and_adds_the_new_ones():
    v1 = json.loads(suite_path(EXPECTATIONS, "credit_default_v1").read_text())["expectations"]
    v2 = expected_checks(load_schema("credit_default"))
    described = {c["description"] for c in v2}
    kept = {e["description"] for e in v1} - {"ID is numeric"}  # an ID may be text at a bank: no type check now
    kept = {
        d.replace("default.payment.next.month in code set [0, 1]", "default.payment.next.month is 1 (default) or 0")
        for d in kept
    }
    assert kept <= described
    assert {c["description"] for c in v2} - kept == {
        *(f"{f} is not constant" for f in load_schema("credit_default").features),
        "at most 1.0% of rows repeat another row (the ID aside)",
    }


def test_writing_refuses_to_overwrite_a_version_with_other_checks(tmp_path):
    import shutil

    shutil.copytree(EXPECTATIONS, tmp_path / "expectations", ignore=shutil.ignore_patterns("uncommitted"))
    schema = load_schema("german_credit")
    assert write_suite(schema, tmp_path / "expectations") == len(expected_checks(schema))  # unchanged: fine
    changed = schema.model_copy(update={"min_rows": 50})
    with pytest.raises(ValueError, match="set version: 2"):
        write_suite(changed, tmp_path / "expectations")
    bumped = changed.model_copy(update={"version": 2})
    write_suite(bumped, tmp_path / "expectations")
    require_current_suite(bumped, tmp_path / "expectations")


def _context_copy(tmp_path):
    import shutil

    return shutil.copytree(EXPECTATIONS, tmp_path / "expectations", ignore=shutil.ignore_patterns("uncommitted"))


def test_a_draft_no_model_was_trained_on_is_rewritten_in_place_and_recorded_until_one_is(tmp_path):
    from mlflow import MlflowClient

    from contract.suites import REDRAFTS, SuiteOutOfDate, redraft_suite

    context = _context_copy(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    schema = load_schema("german_credit")
    edited = schema.model_copy(update={"min_rows": 50})  # a draft's check edited, the version kept
    with pytest.raises(SuiteOutOfDate, match="--redraft german_credit"):
        require_current_suite(edited, context)
    redraft_suite(edited, context, uri)
    require_current_suite(edited, context)  # the edited draft's suite is now the committed one
    suite = json.loads(suite_path(context, "german_credit_v1").read_text())
    [record] = suite["meta"][REDRAFTS]
    assert record["no_model_trained_on_it_in"] == uri and len(record["replaced_checks_sha256"]) == 64
    assert suite["id"] == json.loads(suite_path(EXPECTATIONS, "german_credit_v1").read_text())["id"]

    client = MlflowClient(uri)  # a model trained on version 1: its suite now stays as that model was checked with
    client.create_registered_model("scorecard")
    client.create_model_version(
        "scorecard", "file:///nowhere", tags={"schema.name": "german_credit", "schema.version": "1"}
    )
    with pytest.raises(
        SuiteOutOfDate,
        match=r"version 1 trained scorecard/1 \(registered in sqlite:///.*set "
        r"version: 2",
    ):
        redraft_suite(schema, context, uri)
    require_current_suite(edited, context)


def test_a_moved_expectations_dir_is_one_whole_context_and_build_suites_writes_where_runs_read(tmp_path):
    import os
    import subprocess
    import sys

    from contract.suites import SuiteOutOfDate

    build = [sys.executable, str(EXPECTATIONS / "build_suites.py")]
    empty = tmp_path / "results_only"
    empty.mkdir()
    with pytest.raises(
        SuiteOutOfDate,
        match=f"{empty} \\(FEDRISK_EXPECTATIONS_DIR\\) is not a Great Expectations context: .*copy the project's",
    ):
        require_current_suite(load_schema("german_credit"), empty)
    refused = subprocess.run(
        build, env={**os.environ, "FEDRISK_EXPECTATIONS_DIR": str(empty)}, capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 1 and "is not a Great Expectations context" in refused.stdout

    context = _context_copy(tmp_path)
    suite_path(context, "german_credit_v1").unlink()
    with pytest.raises(
        SuiteOutOfDate,
        match=f"write it with `FEDRISK_EXPECTATIONS_DIR={context} uv run python expectations/build_suites.py`",
    ):
        require_current_suite(load_schema("german_credit"), context)
    before = suite_path(EXPECTATIONS, "german_credit_v1").read_bytes()
    built = subprocess.run(
        build, env={**os.environ, "FEDRISK_EXPECTATIONS_DIR": str(context)}, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "wrote suite german_credit_v1" in built.stdout
    require_current_suite(load_schema("german_credit"), context)
    assert suite_path(EXPECTATIONS, "german_credit_v1").read_bytes() == before  # the project's own untouched


def test_the_rare_level_threshold_cannot_change_under_the_same_version(tmp_path):
    from contract.suites import SCHEMA_SETTINGS, SuiteOutOfDate, redraft_suite

    context = _context_copy(tmp_path)
    schema = load_schema("german_credit")
    bolder = schema.model_copy(update={"rare_level_min_rows": 1})  # would name every level in every artifact
    with pytest.raises(
        SuiteOutOfDate, match="changes rare_level_min_rows from 10 to 1 under the same version .*set version: 2"
    ):
        require_current_suite(bolder, context)
    redraft_suite(bolder, context, f"sqlite:///{tmp_path / 'mlflow.db'}")  # a draft nothing was trained on
    require_current_suite(bolder, context)
    assert json.loads(suite_path(context, "german_credit_v1").read_text())["meta"][SCHEMA_SETTINGS] == {
        "rare_level_min_rows": 1
    }
    with pytest.raises(SuiteOutOfDate, match="rare_level_min_rows from 1 to 10"):
        require_current_suite(schema, context)
    fresh = schema.model_copy(update={"version": 2, "rare_level_min_rows": 20})
    write_suite(fresh, context)  # a new version's suite records the threshold it was written with
    require_current_suite(fresh, context)
    with pytest.raises(SuiteOutOfDate, match="rare_level_min_rows from 20 to 10"):
        require_current_suite(fresh.model_copy(update={"rare_level_min_rows": 10}), context)
