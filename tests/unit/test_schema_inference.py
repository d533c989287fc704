"""fedrisk schema infer: a draft schema from an extract, printing aggregates and level names only."""

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from contract.schema import parse_schema
from contract.schema_inference import SchemaInferenceError, infer_schema
from tests.conftest import SHARED_DATA


@pytest.fixture
def extract(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            "customer": [f"C{100000 + i}" for i in range(n)],
            "income": np.round(rng.lognormal(10, 0.5, n), 2),
            "children": rng.integers(0, 4, n),
            "employer": [f"Employer {i}" for i in rng.integers(0, 300, n)],  # free text: never shown
            "region": rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.28, 0.02]),
            "defaulted": rng.choice(["no", "yes"], n, p=[0.8, 0.2]),
        }
    )
    frame.loc[frame.index[:12], "income"] = np.nan
    frame.loc[frame.index[20], "region"] = "Flat 3, 12 Acacia Road"  # one customer's text in a level column
    path = tmp_path / "extract.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_a_draft_is_a_valid_schema_once_reviewed_and_shows_no_row_value(extract):
    path, frame = extract
    text = infer_schema(path, label="defaulted", name="my_bank")
    draft = yaml.safe_load(text)
    schema = parse_schema({**draft, "description": "reviewed"}, "draft")
    assert schema.id == "customer"  # unique text in every row: recognised without --id
    assert schema.label.positive == "yes" and schema.label.negative == "no"
    assert (schema.label.meaning, schema.output) == ("defaulted", "defaulted_probability")  # from the label
    assert schema.features["income"].type == "numeric" and schema.features["income"].missing.max_rate == 0.1
    assert schema.features["children"].levels == [0, 1, 2, 3]  # integer codes are levels
    assert schema.features["region"].levels == sorted(set(frame["region"]))  # every level, the rare ones too
    assert schema.features["employer"].levels == "open"
    assert "2 level(s) held by fewer than 10 rows: kept here" in text
    assert "Rows of the source each feature's checks reject: 0 (none by any check)" in text
    for value in ("Employer", "C100", *[f"{v:.2f}" for v in frame["income"].dropna()]):
        assert value not in text, value
    low, high = schema.features["income"].min, schema.features["income"].max
    assert low == 0 and high > frame["income"].max() and len(re.sub(r"[^1-9]", "", f"{high:g}")) <= 2


def test_a_count_keeps_an_open_upper_range_and_codes_with_rare_values_stay_levels(tmp_path):
    """Zero-inflated delinquencies got `max: 0.5` (any delinquency rejected); a credit history coded 1-6 with a
    rare code was drafted as a continuous number."""
    rng = np.random.default_rng(1)
    n = 600
    frame = pd.DataFrame(
        {
            "delinquencies": np.where(rng.random(n) < 0.97, 0, rng.integers(1, 9, n)),
            "history": rng.choice([1, 2, 3, 4, 5, 6], n, p=[0.3, 0.3, 0.2, 0.17, 0.02, 0.01]),
            "bad": rng.choice([0, 1], n, p=[0.9, 0.1]),
        }
    )
    path = tmp_path / "book.csv"
    frame.to_csv(path, index=False)
    features = yaml.safe_load(infer_schema(path))["features"]
    assert features["delinquencies"] == {"type": "numeric", "dtype": "int", "min": 0}
    assert features["history"] == {"type": "categorical", "levels": sorted(set(frame["history"]))}


def test_several_institutions_files_draft_one_schema_that_each_of_them_passes(tmp_path):
    """Real data sets the drafts were never tuned on, split into institutions: every institution passes the
    suite of the schema drafted from their files, unedited but for the description."""
    import shutil

    from contract.data import Extract
    from contract.suites import write_suite
    from contract.synthetic import split_file
    from institution.validation import validate_extract
    from tests.conftest import TEST_EXPECTATIONS_DIR, UCI_DIR

    german = SHARED_DATA / "german_credit" / "germancredit.csv"
    fraud = SHARED_DATA / "ulb_fraud_subset" / "creditcard_subset.csv"
    if not (german.is_file() and fraud.is_file() and (UCI_DIR / "bank_a.csv").is_file()):
        pytest.skip(f"the real data sets are not in {SHARED_DATA} (../shared/data is absent)")
    consortia = {
        "german_credit": (
            "creditability",
            split_file(pd.read_csv(german), "creditability", ["a", "b", "c"], 0, None, tmp_path / "german"),
        ),
        "uci_banks": ("default.payment.next.month", {n: UCI_DIR / f"{n}.csv" for n in ("bank_a", "bank_b", "bank_c")}),
        "card_fraud": ("Class", split_file(pd.read_csv(fraud), "Class", ["a", "b"], 0, None, tmp_path / "fraud")),
    }
    expectations = tmp_path / "expectations"
    shutil.copytree(TEST_EXPECTATIONS_DIR, expectations)
    for name, (label, files) in consortia.items():
        text = infer_schema(list(files.values()), label=label, name=f"draft_{name}")
        assert "Rows of the source each feature's checks reject: 0 (none by any check)" in text, name
        schema = parse_schema({**yaml.safe_load(text), "description": "reviewed"}, name)
        write_suite(schema, expectations)
        for institution, path in files.items():
            report = validate_extract(Extract(institution, path), schema, expectations_dir=expectations)
            assert report.passed, (name, institution, report.reasons)


def test_a_label_that_is_not_binary_is_refused(extract):
    path, _ = extract
    with pytest.raises(SchemaInferenceError, match="label 'children' has 4 distinct values; a binary label has 2"):
        infer_schema(path, label="children")


@pytest.mark.parametrize(
    "label, refusal",
    [
        (
            None,
            r"the first line looks like a row, not a header \(\d of 6 fields are numbers or values of their column\): "
            r"the file must start with a line naming its columns",
        ),
        ("defaulted", "the first line looks like a row"),
    ],
)
def test_a_headerless_file_is_refused_and_no_error_quotes_a_row(extract, tmp_path, label, refusal):
    path, frame = extract
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("\n".join(path.read_text().splitlines()[1:]))  # the first customer's row is line one
    with pytest.raises(SchemaInferenceError, match=refusal) as error:
        infer_schema(headerless, label=label)
    assert frame["customer"].iloc[0] not in str(error.value)
    with pytest.raises(
        SchemaInferenceError,
        match=r"no label column 'default' among its 6 columns \(pass --label "
        r"with the name of one\)$",
    ):
        infer_schema(path, label="default")
    system = tmp_path / "passwd"
    system.write_text("root:x:0:0:root:/root:/bin/bash\nbin:x:2:2::/bin:/usr/sbin/nologin\n")
    with pytest.raises(SchemaInferenceError, match="one column found: an extract is comma-separated") as error:
        infer_schema(system)
    assert "root:x" not in str(error.value)


def test_the_german_credit_file_drafts_into_the_shipped_layout():
    source = SHARED_DATA / "german_credit" / "germancredit.csv"
    if not source.is_file():
        pytest.skip(f"{source} not found (../shared/data is absent)")
    draft = yaml.safe_load(infer_schema(source, label="creditability", name="german_credit"))
    assert draft["label"]["positive"] == "bad" and len(draft["features"]) == 20
    categorical = [n for n, f in draft["features"].items() if f["type"] == "categorical"]
    # The shipped schema's 13 text features, and 4 small integer codes (1-4: installment rate, residence, credits,
    # people liable) drafted as levels; "retraining", held by 9 of 1,000 rows, is kept (folded in artifacts).
    assert len(categorical) == 17 and "retraining" in draft["features"]["purpose"]["levels"]
    assert draft["features"]["duration_in_month"]["type"] == "numeric"
