import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from contract.data import Extract, read_institution
from contract.schema import available_schemas, load_schema
from contract.synthetic import PORTFOLIOS, split_file, synthesize
from institution.validation import check_frame, validate_extract
from tests.conftest import TEST_EXPECTATIONS_DIR

CREDIT = load_schema("credit_default")
COLUMNS, FEATURE_COLUMNS, LABEL_COLUMN = CREDIT.columns, list(CREDIT.features), CREDIT.label.column


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    first = synthesize(tmp_path / "a", seed=11, rows_scale=0.1)
    second = synthesize(tmp_path / "b", seed=11, rows_scale=0.1)
    other = synthesize(tmp_path / "c", seed=12, rows_scale=0.1)
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes()
        assert first[name].read_bytes() != other[name].read_bytes()


def test_institutions_are_non_iid(tmp_path):
    frames = {name: pd.read_csv(path) for name, path in synthesize(tmp_path, seed=0).items()}
    assert [len(f) for f in frames.values()] == [p.rows for p in PORTFOLIOS] == [20_000, 8_000, 4_000, 2_000]
    rates = [f[LABEL_COLUMN].mean() for f in frames.values()]
    for rate, portfolio in zip(rates, PORTFOLIOS, strict=True):
        assert abs(rate - portfolio.default_rate) < 0.025
    assert max(rates) - min(rates) > 0.15
    ages = [f["AGE"].mean() for f in frames.values()]
    limits = [f["LIMIT_BAL"].median() for f in frames.values()]
    assert ages == sorted(ages, reverse=True) and ages[0] - ages[-1] > 8
    assert limits == sorted(limits, reverse=True) and limits[0] > 4 * limits[-1]
    ids = pd.concat([f["ID"] for f in frames.values()])
    assert ids.is_unique


def test_rows_follow_the_schema_and_pass_the_suite(tmp_path):
    for path in synthesize(tmp_path, seed=5, rows_scale=0.2).values():
        frame = read_institution("synthetic", path, CREDIT)
        assert list(frame.columns) == COLUMNS
        checked = check_frame(frame, CREDIT.suite, TEST_EXPECTATIONS_DIR)
        evaluated, errors, warnings, page = checked.evaluated, checked.errors, checked.warnings, checked.page
        assert evaluated == 126 and errors == [] and warnings == [] and page.is_file()


@pytest.mark.parametrize("name", available_schemas())
def test_every_schema_has_a_synthetic_consortium_that_passes_its_suite(tmp_path, name):
    schema = load_schema(name)
    paths = synthesize(tmp_path, 3, seed=4, rows_scale=0.2, schema=schema)
    rates = []
    for institution, path in paths.items():
        report = validate_extract(Extract(institution, path), schema, expectations_dir=TEST_EXPECTATIONS_DIR)
        assert report.passed and report.warnings == [], (institution, report.reasons)
        rates.append(read_institution(institution, path, schema)[schema.label.column].mean())
    assert max(rates) - min(rates) > 0.01  # non-IID


def test_a_real_file_splits_into_stratified_institutions_with_ids(tmp_path):
    frame = pd.DataFrame({"x": range(90), "bad": ["bad"] * 30 + ["good"] * 60})
    paths = split_file(frame, "bad", ["a", "b", "c"], seed=1, id_column="ID", out_dir=tmp_path)
    parts = [pd.read_csv(p) for p in paths.values()]
    assert [len(p) for p in parts] == [30, 30, 30] and all((p["bad"] == "bad").sum() == 10 for p in parts)
    assert sorted(pd.concat(parts)["x"]) == list(range(90)) and pd.concat(parts)["ID"].is_unique
    assert list(parts[0].columns) == ["ID", "x", "bad"]
    again = split_file(frame, "bad", ["a", "b", "c"], seed=1, id_column="ID", out_dir=tmp_path / "again")
    assert all(paths[n].read_bytes() == again[n].read_bytes() for n in paths)


def test_label_is_learnable_from_the_features(tmp_path):
    frame = pd.read_csv(synthesize(tmp_path, n_institutions=2, seed=1)["birch_credit_union"])
    train, test = frame.iloc[:6000], frame.iloc[6000:]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(train[FEATURE_COLUMNS], train[LABEL_COLUMN])
    auc = roc_auc_score(test[LABEL_COLUMN], model.predict_proba(test[FEATURE_COLUMNS])[:, 1])
    assert auc > 0.75
    shuffled = np.random.default_rng(0).permutation(train[LABEL_COLUMN].to_numpy())
    model.fit(train[FEATURE_COLUMNS], shuffled)
    control = roc_auc_score(test[LABEL_COLUMN], model.predict_proba(test[FEATURE_COLUMNS])[:, 1])
    assert control < auc - 0.15  # the signal is in the features, not in the marginal rate
