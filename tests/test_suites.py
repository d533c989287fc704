"""tasks.suites: every schema version's suite is committed, and is exactly what the schema describes."""

import json

import pytest

from flows.settings import PROJECT_ROOT
from tasks.schema import available_schemas, load_schema
from tasks.suites import expected_checks, require_current_suite, suite_path, write_suite

EXPECTATIONS = PROJECT_ROOT / "expectations"


@pytest.mark.parametrize("name", available_schemas())
def test_the_committed_suite_is_the_one_the_schema_describes(name):
    require_current_suite(load_schema(name), EXPECTATIONS)


def test_credit_default_keeps_its_version_1_checks_and_adds_the_new_ones():
    v1 = json.loads(suite_path(EXPECTATIONS, "credit_default_v1").read_text())["expectations"]
    v2 = expected_checks(load_schema("credit_default"))
    described = {c["description"] for c in v2}
    kept = {e["description"] for e in v1} - {"ID is numeric"}  # an ID may be text at a bank: no type check now
    kept = {d.replace("default.payment.next.month in code set [0, 1]",
                      "default.payment.next.month is 1 (default) or 0") for d in kept}
    assert kept <= described
    assert {c["description"] for c in v2} - kept == {
        *(f"{f} is not constant" for f in load_schema("credit_default").features),
        "at most 1.0% of rows repeat another row (the ID aside)"}


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
