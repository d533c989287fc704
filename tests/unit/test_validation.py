import shutil
from pathlib import Path

import pandas as pd
import pytest

from contract.data import Extract, read_institution
from contract.schema import load_schema
from institution.validation import (
    QuorumNotMet,
    ValidationReport,
    admitted_institutions,
    profile_frame,
    validate_extract,
)
from tests.conftest import TEST_EXPECTATIONS_DIR

CREDIT = load_schema("credit_default")
SUITE = CREDIT.suite
CHECKS = 126  # in the credit_default_v2 suite
BROKEN_NAME = "cedar_savings"


@pytest.fixture
def extract(small_consortium, tmp_path):
    """A writable copy of a valid institution extract, to break in each test."""
    path = tmp_path / "cedar.csv"
    shutil.copy(small_consortium["cedar_savings"], path)
    return path


def _validate(path, reference=None, columns=None, schema=CREDIT) -> ValidationReport:
    return validate_extract(
        Extract("cedar_savings", path, columns or {}),
        schema,
        reference=reference,
        expectations_dir=TEST_EXPECTATIONS_DIR,
    )


def _rewrite(path, change) -> None:
    frame = pd.read_csv(path)
    frame = change(frame)
    frame.to_csv(path, index=False)


def test_a_valid_extract_passes(extract):
    report = _validate(extract)
    assert report.passed and report.reasons == [] and report.warnings == []
    assert report.rows == 1000 and report.checks_evaluated == CHECKS and len(report.digest) == 64
    page = Path(report.data_docs)
    assert page.is_file() and "/validation_pages/credit_default_v2/cedar_savings/" in page.as_posix()
    text = page.read_text()
    assert all(
        part in text
        for part in (
            "cedar_savings",
            "credit_default_v2",
            "AGE between 18 and 100",
            f"Admitted: all {CHECKS} checks passed",
        )
    )
    assert text.count(">PASSED<") == CHECKS and "http" not in text  # self-contained: nothing to fetch


def test_a_parquet_extract_with_its_own_column_names_passes(extract, tmp_path):
    frame = pd.read_csv(extract).rename(columns={"LIMIT_BAL": "credit_limit", "AGE": "age_years"})
    path = tmp_path / "cedar.parquet"
    frame.to_parquet(path)
    report = _validate(path, columns={"credit_limit": "LIMIT_BAL", "age_years": "AGE"})
    assert report.passed and report.rows == 1000


def test_an_unknown_extra_column_is_a_warning_and_admitted(extract):
    _rewrite(extract, lambda f: f.assign(BRANCH_CODE=7))
    report = _validate(extract)
    assert report.passed and report.reasons == []
    assert report.warnings == [
        "no columns beyond the schema: 1 unexpected column(s) (named in the institution's checks page)"
    ]  # an undeclared header is the institution's own
    assert "unexpected BRANCH_CODE" in Path(report.institution_page).read_text()
    assert "BRANCH_CODE" not in Path(report.data_docs).read_text()


def test_wrong_delimiter(extract):
    extract.write_text(extract.read_text().replace(",", ";"))
    assert _validate(extract).reasons == [
        f"institution 'cedar_savings': {extract}: one column found; the header is separated by ';', expected ','"
    ]


def test_missing_column_is_reported_once(extract):
    _rewrite(extract, lambda f: f.drop(columns=["AGE"]))
    report = _validate(extract)
    assert not report.passed
    assert report.reasons == ["column AGE is present: failed"]


def test_strings_in_numeric_columns_name_the_column_and_count_with_values_in_the_institutions_log(extract, caplog):
    def corrupt(f):
        f["LIMIT_BAL"] = f["LIMIT_BAL"].astype(object)
        f.loc[4, "LIMIT_BAL"] = "12k"
        f.loc[5, "LIMIT_BAL"] = "abc"
        f["AGE"] = f["AGE"].astype(object)
        f.loc[6, "AGE"] = "forty"
        return f

    _rewrite(extract, corrupt)
    assert _validate(extract).reasons == [
        f"institution 'cedar_savings': {extract}: column LIMIT_BAL has 2 non-numeric values; "
        "column AGE has 1 non-numeric values"
    ]
    assert (
        f"institution 'cedar_savings': {extract}: column LIMIT_BAL has 2 non-numeric values, e.g. '12k', 'abc'; "
        "column AGE has 1 non-numeric values, e.g. 'forty' (at this institution only)"
    ) in caplog.messages


def test_out_of_range_and_out_of_code_set_values(extract):
    def corrupt(f):
        f.loc[0, "AGE"] = 300
        f.loc[1, "AGE"] = -4
        f.loc[2, "PAY_0"] = 12
        return f

    _rewrite(extract, corrupt)
    report = _validate(extract)
    assert "AGE between 18 and 100: failed for 2 of 1000 rows" in report.reasons
    assert "PAY_0 in code set [-2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]: failed for 1 of 1000 rows" in report.reasons
    own, shared = Path(report.institution_page).read_text(), Path(report.data_docs).read_text()
    assert "failed for 2 of 1000 rows; e.g. 300, -4" in own and "e.g." not in shared


def test_nulls(extract):
    def corrupt(f):
        f.loc[[3, 9], "EDUCATION"] = None
        return f

    _rewrite(extract, corrupt)
    assert "EDUCATION has no missing values: failed for 2 of 1000 rows" in _validate(extract).reasons


def test_duplicate_ids(extract):
    def corrupt(f):
        f.loc[5, "ID"] = f.loc[6, "ID"]
        return f

    _rewrite(extract, corrupt)
    reasons = _validate(extract).reasons
    assert any(r.startswith("ID is unique: failed for 2 of 1000 rows") for r in reasons)


def test_non_binary_label(extract):
    def corrupt(f):
        f.loc[0, "default.payment.next.month"] = 2
        return f

    _rewrite(extract, corrupt)
    assert _validate(extract).reasons == [
        f"institution 'cedar_savings': {extract}: column default.payment.next.month has 1 values other than 1 "
        f"(default) and 0"
    ]


def test_empty_file_and_header_only(extract):
    header = extract.read_text().splitlines()[0]
    extract.write_text(header + "\n")
    report = _validate(extract)
    assert not report.passed and report.rows == 0
    assert report.reasons == [
        f"institution 'cedar_savings': {extract}: a header line and no rows: nothing to check or train on"
    ]  # one reason, not 25 failed checks
    extract.write_text("")
    report = _validate(extract)
    assert report.reasons == [f"institution 'cedar_savings': {extract}: file is empty"]


def test_validation_never_modifies_the_input(extract):
    before = extract.read_bytes()
    _validate(extract)
    assert extract.read_bytes() == before


def _report(name, passed, reasons=()):
    return ValidationReport(name, f"/data/{name}.csv", SUITE, passed=passed, reasons=list(reasons))


def test_quorum_admits_passing_institutions():
    reports = [_report("a", True), _report("b", False, ["AGE between 18 and 100: failed"]), _report("c", True)]
    assert admitted_institutions(reports, quorum=2) == ["a", "c"]


def test_quorum_row_share_counts_the_rows_institutions_reported():
    reports = [
        ValidationReport("big", "/b.csv", SUITE, passed=False, rows=9000, reasons=["AGE between 18 and 100: failed"]),
        ValidationReport("s1", "/s1.csv", SUITE, passed=True, rows=500),
        ValidationReport("s2", "/s2.csv", SUITE, passed=True, rows=500),
    ]
    assert admitted_institutions(reports, quorum=2, min_row_share=0.1) == ["s1", "s2"]
    with pytest.raises(QuorumNotMet) as error:
        admitted_institutions(reports, quorum=2, min_row_share=0.5)
    assert str(error.value) == (
        "institutions that passed hold 10.0% of 10000 rows, policy requires 50.0%; nothing was trained or "
        "registered. Excluded: big: AGE between 18 and 100: failed"
    )


def test_below_quorum_names_every_excluded_institution():
    reports = [
        _report("a", True),
        _report("b", False, ["column AGE is present: failed"]),
        _report("c", False, ["at least 200 rows: observed 10"]),
    ]
    with pytest.raises(QuorumNotMet) as error:
        admitted_institutions(reports, quorum=2)
    assert str(error.value) == (
        "only 1 of 3 institutions passed validation, quorum is 2; nothing was trained or registered. "
        "Excluded: b: column AGE is present: failed; c: at least 200 rows: observed 10"
    )


def _reference(path):
    return profile_frame(read_institution("cedar_savings", path, CREDIT), CREDIT)


def test_profile_holds_only_aggregates(extract):
    profile = _reference(extract)
    assert profile["rows"] == 1000 and set(profile["features"]) == set(CREDIT.features)
    assert set(profile["features"]["AGE"]) == {"missing", "distinct", "mean", "std", "p05", "p50", "p95"}


def test_unchanged_extract_passes_the_drift_checks(extract):
    reference = _reference(extract)
    report = _validate(extract, reference)
    distinct = sum(stats["distinct"] > 2 for stats in reference["features"].values())
    assert report.passed and report.checks_evaluated == CHECKS + 1 + len(CREDIT.features) + distinct


@pytest.mark.parametrize("factor, also_out_of_range", [(1000, True), (10, False)])
def test_a_units_change_is_caught_by_the_drift_check(extract, factor, also_out_of_range):
    reference = _reference(extract)
    _rewrite(extract, lambda f: f.assign(LIMIT_BAL=f["LIMIT_BAL"] * factor))
    report = _validate(extract, reference)
    mean = reference["features"]["LIMIT_BAL"]["mean"]
    drift = [r for r in report.reasons if r.startswith("LIMIT_BAL mean within 1 std of the last accepted extract")]
    assert not report.passed and len(drift) == 1
    assert drift[0] == (
        f"LIMIT_BAL mean within 1 std of the last accepted extract ({mean:.4g} +- "
        f"{reference['features']['LIMIT_BAL']['std']:.4g}): observed {mean * factor:.4g}"
    )
    assert (len(report.reasons) == 2) == also_out_of_range  # x10 stays inside the plausible range


@pytest.mark.parametrize("factor", [10, 0.1])
def test_a_tenfold_row_count_spike_or_drop_is_caught(extract, factor):
    frame = read_institution("cedar_savings", extract, CREDIT)
    reference = profile_frame(pd.concat([frame] * 10, ignore_index=True) if factor == 0.1 else frame, CREDIT)
    changed = pd.concat([frame] * 10, ignore_index=True) if factor == 10 else frame
    changed = changed.assign(ID=range(1, len(changed) + 1))
    changed.to_csv(extract, index=False)
    report = _validate(extract, reference)
    spike = f"row count within 10x of the last accepted extract ({reference['rows']} rows): observed {len(changed)}"
    # Ten copies under new IDs are also the same customers repeated.
    repeated = ["at most 1.0% of rows repeat another row (the ID aside): failed for 10000 of 10000 rows"]
    assert report.reasons == [*(repeated if factor == 10 else []), spike]


def test_a_constant_feature_is_quarantined(extract):
    _rewrite(extract, lambda f: f.assign(AGE=35))  # every customer the same age
    assert _validate(extract).reasons == ["AGE is not constant: observed 1"]


def test_the_same_customers_under_new_ids_are_quarantined(extract):
    def repeat(f):
        copies = f.iloc[:40].assign(ID=lambda c: c["ID"] + 10_000_000)
        return pd.concat([f.iloc[:960], copies], ignore_index=True)

    _rewrite(extract, repeat)
    # Counted, never shown: an example would be a whole customer row.
    assert _validate(extract).reasons == [
        "at most 1.0% of rows repeat another row (the ID aside): failed for 80 of 1000 rows"
    ]


def test_a_collapsing_number_of_distinct_values_is_drift(extract):
    reference = _reference(extract)
    _rewrite(extract, lambda f: f.assign(BILL_AMT1=(f["BILL_AMT1"] // 100_000) * 100_000))  # a default filled in
    [reason] = _validate(extract, reference).reasons
    before = reference["features"]["BILL_AMT1"]["distinct"]
    assert reason.startswith(
        f"BILL_AMT1 has at least {-(-before // 5)} distinct values (the last accepted extract had {before}): observed "
    )


def test_a_mapping_that_leaves_no_schema_feature_is_a_clear_report_not_a_crash(extract):
    columns = {c: f"{c}_renamed" for c in pd.read_csv(extract, nrows=0).columns}
    report = _validate(extract, columns=columns)
    assert not report.passed and report.rows == 1000
    assert report.reasons[:2] == ["column ID is present: failed", "column LIMIT_BAL is present: failed"]
    assert report.profile["features"] == {}


def test_the_report_names_the_file_this_run_read(extract, tmp_path):
    copy = tmp_path / "elsewhere" / "cedar.csv"
    copy.parent.mkdir()
    copy.write_bytes(extract.read_bytes())
    assert _validate(extract).path == str(extract) and _validate(copy).path == str(copy)


def test_categorical_level_shares_drift_and_rare_levels_stay_out_of_the_profile(tmp_path):
    from contract.synthetic import synthesize

    german = load_schema("german_credit")
    path = synthesize(tmp_path, 1, seed=2, schema=german)["alder_bank"]
    frame = pd.read_csv(path)
    frame.loc[frame.index[:4], "purpose"] = "retraining"
    frame.loc[frame.index[4:], "purpose"] = frame.loc[frame.index[4:], "purpose"].replace("retraining", "business")
    frame.to_csv(path, index=False)
    reference = profile_frame(read_institution("alder_bank", path, german), german)
    assert "retraining" not in reference["features"]["purpose"]["levels"]  # 4 rows: below the schema's 10
    assert _validate(path, reference, schema=german).passed
    frame.loc[frame.index[: len(frame) // 2], "housing"] = "for free"  # half the book moves to one level
    frame.to_csv(path, index=False)
    [reason] = _validate(path, reference, schema=german).reasons
    assert reason.startswith("housing level shares within KL divergence 0.1 of the last accepted extract's")
