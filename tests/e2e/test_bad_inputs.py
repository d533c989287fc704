"""The bad-input matrix, through the real flow: each broken extract quarantines its institution
with an exact reason, stops the run before training (quorum = both institutions), registers
nothing, leaves the champion where it was and never modifies the input file."""

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.retrain import retrain
from institution.validation import QuorumNotMet
from tests.conftest import run_config

pytestmark = pytest.mark.usefixtures("prefect_api")
MODEL = "credit_matrix"
BROKEN = "cedar_savings"


@pytest.fixture(scope="module")
def consortium(small_consortium):
    return {name: small_consortium[name] for name in (BROKEN, "dune_finance")}


@pytest.fixture(scope="module")
def registry_with_champion(tmp_path_factory, consortium):
    """A tracking store whose model already has a champion (version 1) trained on the good extracts."""
    root = tmp_path_factory.mktemp("matrix")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        retrain(_config(consortium, quorum=2))
        yield root


def _config(paths, quorum):
    # One round is not calibrated; not what is tested here.
    return run_config(
        paths, model_name=MODEL, quorum=quorum, training={"rounds": 1}, promotion={"max_calibration_error": None}
    )


def _frame_change(change):
    def write(source: Path, target: Path) -> None:
        change(pd.read_csv(source)).to_csv(target, index=False)

    return write


def _text_change(change):
    def write(source: Path, target: Path) -> None:
        target.write_bytes(change(source.read_bytes()))

    return write


def _set(column, rows, value):
    def change(frame):
        frame = frame.copy()
        if isinstance(value, str):
            frame[column] = frame[column].astype(object)
        frame.loc[rows, column] = value
        return frame

    return change


CASES = {
    "file missing": (None, "{file}: file not found"),
    "empty file": (_text_change(lambda b: b""), "{file}: file is empty"),
    "header only": (
        _text_change(lambda b: b.split(b"\n")[0] + b"\n"),
        "{file}: a header line and no rows: nothing to check or train on",
    ),
    "truncated mid-row": (
        _text_change(lambda b: b[: b.rindex(b"\n", 0, len(b) // 2) + 12]),
        "{file}: last line incomplete (line 498 has 2 of 25 fields; the file ends mid-line)",
    ),
    "header repeated": (
        _text_change(lambda b: b"\n".join([*b.split(b"\n")[:2], b.split(b"\n")[0], *b.split(b"\n")[2:]])),
        "{file}: header repeated at line 3",
    ),
    "corrupt CSV": (_text_change(lambda b: b[:40] + b'"unterminated\n' + b[40:]), "{file}: malformed CSV"),
    "wrong delimiter": (
        _text_change(lambda b: b.replace(b",", b";")),
        "{file}: one column found; the header is separated by ';', expected ','",
    ),
    "headerless": (
        _text_change(lambda b: b.split(b"\n", 1)[1]),
        "{file}: the first line looks like a row, not a header (25 of 25 fields are numbers or values "
        "of their column): the file must start with a line naming its columns",
    ),
    "a system file, not an extract": (
        _text_change(lambda b: b"root:x:0:0:root:/root:/bin/bash\nbin:x:2:2::/bin:\n"),
        "{file}: one column found, the schema declares 25: not a comma-separated "
        "extract with a header line naming its columns",
    ),
    "non-UTF-8 bytes": (_text_change(lambda b: b[:60] + b"\xff\xfe" + b[60:]), "{file}: not UTF-8 text"),
    "missing column": (_frame_change(lambda f: f.drop(columns=["MARRIAGE"])), "column MARRIAGE is present: failed"),
    "strings in a numeric column": (
        _frame_change(_set("BILL_AMT3", [1, 2], "1,200")),
        "{file}: column BILL_AMT3 has 2 non-numeric values",
    ),
    "AGE negative": (_frame_change(_set("AGE", [0], -3)), "AGE between 18 and 100: failed for 1 of 1000 rows"),
    "AGE 300": (_frame_change(_set("AGE", [0], 300)), "AGE between 18 and 100: failed for 1 of 1000 rows"),
    "PAY_ outside its code set": (
        _frame_change(_set("PAY_4", [7, 8], -5)),
        "PAY_4 in code set [-2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]: failed for 2 of 1000 rows",
    ),
    "nulls": (_frame_change(_set("SEX", [3], None)), "SEX has no missing values: failed for 1 of 1000 rows"),
    "duplicate IDs": (
        _frame_change(lambda f: f.assign(ID=f["ID"].where(f.index != 1, f["ID"][2]))),
        "ID is unique: failed for 2 of 1000 rows",
    ),
    "non-binary label": (
        _frame_change(_set("default.payment.next.month", [0], 3)),
        "{file}: column default.payment.next.month has 1 values other than 1 (default) and 0",
    ),
    "a constant feature": (_frame_change(lambda f: f.assign(AGE=41)), "AGE is not constant: observed 1"),
    "the same customers under new IDs": (
        _frame_change(
            lambda f: pd.concat(
                [f.iloc[:950], f.iloc[:50].assign(ID=lambda c: c["ID"] + 10_000_000)], ignore_index=True
            )
        ),
        "at most 1.0% of rows repeat another row (the ID aside): failed for 100 of 1000 rows",
    ),
    "single-class label": (
        _frame_change(lambda f: f.assign(**{"default.payment.next.month": 0})),
        "default.payment.next.month positive rate between 0.01 and 0.6: observed 0",
    ),
    "label rate out of bounds": (
        _frame_change(lambda f: f.assign(**{"default.payment.next.month": (f.index % 5 != 0).astype(int)})),
        "default.payment.next.month positive rate between 0.01 and 0.6: observed 0.8",
    ),
    "units change (LIMIT_BAL x1000)": (
        _frame_change(lambda f: f.assign(LIMIT_BAL=f["LIMIT_BAL"] * 1000)),
        "LIMIT_BAL mean within 1 std of the last accepted extract",
    ),
    "10x row-count spike": (
        _frame_change(lambda f: pd.concat([f] * 10, ignore_index=True).assign(ID=lambda g: g.index + 1)),
        "row count within 10x of the last accepted extract (1000 rows): observed 10000",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, registry_with_champion, consortium, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registry_with_champion / 'mlflow.db'}")
    write, expected = CASES[case]
    paths = dict(consortium)
    paths[BROKEN] = tmp_path / "cedar.csv"
    if write is not None:
        write(consortium[BROKEN], paths[BROKEN])
        before = hashlib.sha256(paths[BROKEN].read_bytes()).hexdigest()

    with pytest.raises(QuorumNotMet) as stopped:
        retrain(_config(paths, quorum=2))

    message = str(stopped.value)
    assert message.startswith(
        "only 1 of 2 institutions passed validation, quorum is 2; nothing was trained or registered."
    )
    assert f"Excluded: {BROKEN}: " in message and "dune_finance:" not in message
    assert expected.format(file=paths[BROKEN]) in message
    assert "e.g." not in message and "root:x" not in message  # example values stay at the institution
    if write is not None:
        assert hashlib.sha256(paths[BROKEN].read_bytes()).hexdigest() == before
    client = MlflowClient()
    assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")] == ["1"]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"


def test_a_file_replaced_after_validation_stops_the_run_and_registers_nothing(
    registry_with_champion, consortium, tmp_path, monkeypatch
):
    import flows.retrain as flow
    from contract.data import InstitutionDataError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registry_with_champion / 'mlflow.db'}")
    paths = dict(consortium)
    paths[BROKEN] = tmp_path / "cedar.csv"
    paths[BROKEN].write_bytes(consortium[BROKEN].read_bytes())
    find_champion = flow.find_champion

    def replace_the_file_then_find_champion(*args, **kwargs):  # the first step after validation
        paths[BROKEN].write_bytes(consortium["dune_finance"].read_bytes())  # rows nobody validated
        return find_champion(*args, **kwargs)

    monkeypatch.setattr(flow, "find_champion", replace_the_file_then_find_champion)
    with pytest.raises(InstitutionDataError) as stopped:
        retrain(_config(paths, quorum=2))
    assert str(stopped.value).startswith(
        f"institution '{BROKEN}': {paths[BROKEN]}: the file changed after it was validated (sha256 "
    )
    assert "nothing was trained on it" in str(stopped.value)
    client = MlflowClient()
    assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")] == ["1"]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
