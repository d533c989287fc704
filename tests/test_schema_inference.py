"""fedrisk schema infer: a draft schema from an extract, printing aggregates and level names only."""

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks.schema import parse_schema
from tasks.schema_inference import SchemaInferenceError, infer_schema
from tests.conftest import SHARED_DATA


@pytest.fixture
def extract(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({
        "customer": [f"C{100000 + i}" for i in range(n)],
        "income": np.round(rng.lognormal(10, 0.5, n), 2),
        "children": rng.integers(0, 4, n),
        "employer": [f"Employer {i}" for i in rng.integers(0, 300, n)],  # free text: never shown
        "region": rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.28, 0.02]),
        "defaulted": rng.choice(["no", "yes"], n, p=[0.8, 0.2]),
    })
    frame.loc[frame.index[:12], "income"] = np.nan
    frame.loc[frame.index[20], "region"] = "Flat 3, 12 Acacia Road"  # one customer's text in a level column
    path = tmp_path / "extract.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_a_draft_is_a_valid_schema_once_reviewed_and_shows_no_row_value(extract):
    path, frame = extract
    text = infer_schema(path, label="defaulted", name="my_bank", id_column="customer")
    draft = yaml.safe_load(text)
    schema = parse_schema({**draft, "description": "reviewed"}, "draft")
    assert schema.id == "customer" and schema.label.positive == "yes" and schema.label.negative == "no"
    assert schema.features["income"].type == "numeric" and schema.features["income"].missing.max_rate == 0.06
    assert schema.features["children"].allowed == [0, 1, 2, 3]
    assert schema.features["region"].levels == ["east", "north", "south"]  # "west" (8 rows) and one address hidden
    assert schema.features["employer"].levels == "open"
    assert "2 level(s) held by fewer than 10 rows not shown" in text
    for value in ("Acacia", "Employer", "C100", "west", *[f"{v:.2f}" for v in frame["income"].dropna()]):
        assert value not in text, value
    low, high = schema.features["income"].min, schema.features["income"].max
    assert low == 0 and high > frame["income"].max() and len(re.sub(r"[^1-9]", "", f"{high:g}")) <= 2


def test_a_label_that_is_not_binary_is_refused(extract):
    path, _ = extract
    with pytest.raises(SchemaInferenceError, match="label 'children' has 4 distinct values; a binary label has 2"):
        infer_schema(path, label="children")


@pytest.mark.parametrize("label, refusal", [
    (None, r"the first line looks like a row, not a header \(\d of 6 fields are numbers or values of their column\): "
           r"the file must start with a line naming its columns"),
    ("defaulted", "the first line looks like a row"),
])
def test_a_headerless_file_is_refused_and_no_error_quotes_a_row(extract, tmp_path, label, refusal):
    path, frame = extract
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("\n".join(path.read_text().splitlines()[1:]))  # the first customer's row is line one
    with pytest.raises(SchemaInferenceError, match=refusal) as error:
        infer_schema(headerless, label=label)
    assert frame["customer"].iloc[0] not in str(error.value)
    with pytest.raises(SchemaInferenceError, match=r"no label column 'default' among its 6 columns \(pass --label "
                                                   r"with the name of one\)$"):
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
    assert len(categorical) == 13 and "retraining" not in draft["features"]["purpose"]["levels"]
