import os

import numpy as np
import pandas as pd
import pytest

from tasks.data import (
    InstitutionDataError, balanced_positive_weight, combine_statistics, compute_local_statistics, frame_digest,
    load_part, load_split, local_statistics, read_institution, split_holdout,
)
from tasks.schema import FEATURE_COLUMNS, LABEL_COLUMN


def test_federated_statistics_equal_pooled_statistics_without_pooling(small_consortium):
    per_institution = [
        compute_local_statistics.fn(name, path, None, FEATURE_COLUMNS, LABEL_COLUMN, 0.2, 7)
        for name, path in small_consortium.items()
    ]
    mean, std = combine_statistics(per_institution)
    # The reference pools the same training splits; only the test ever sees them together.
    pooled = np.concatenate([
        load_split(name, path, None, FEATURE_COLUMNS, LABEL_COLUMN, part="train", holdout_fraction=0.2, seed=7).x
        for name, path in small_consortium.items()
    ])
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std, pooled.std(axis=0), rtol=1e-6, atol=1e-6)
    assert sum(s.count for s in per_institution) == len(pooled)


def test_statistics_carry_only_aggregates():
    stats = local_statistics("bank", np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), np.array([1.0, 0.0, 1.0]))
    assert stats.count == 3 and stats.sum == [9.0, 12.0] and stats.sum_of_squares == [35.0, 56.0]
    assert stats.positives == 2


def test_balanced_positive_weight_is_negatives_per_positive_over_all_institutions():
    a = local_statistics("a", np.zeros((10, 1)), np.array([1.0] * 1 + [0.0] * 9))
    b = local_statistics("b", np.zeros((30, 1)), np.array([1.0] * 3 + [0.0] * 27))
    assert balanced_positive_weight([a, b]) == 36 / 4
    with pytest.raises(ValueError, match="both classes"):
        balanced_positive_weight([local_statistics("c", np.zeros((3, 1)), np.zeros(3))])


def test_constant_feature_gets_unit_std():
    stats = [local_statistics("a", np.array([[1.0, 5.0], [2.0, 5.0]]), np.array([0.0, 1.0])),
             local_statistics("b", np.array([[3.0, 5.0]]), np.array([0.0]))]
    mean, std = combine_statistics(stats)
    np.testing.assert_allclose(mean, [2.0, 5.0])
    np.testing.assert_allclose(std, [np.sqrt(2 / 3), 1.0])


def test_holdout_split_is_stratified_and_deterministic(small_consortium):
    frame = read_institution("alder_bank", small_consortium["alder_bank"])
    train, holdout = split_holdout(frame, LABEL_COLUMN, fraction=0.2, seed=1, institution="alder_bank")
    again, _ = split_holdout(frame, LABEL_COLUMN, fraction=0.2, seed=1, institution="alder_bank")
    assert len(holdout) == len(frame) // 5
    assert abs(holdout[LABEL_COLUMN].mean() - frame[LABEL_COLUMN].mean()) < 0.002
    assert list(train["ID"]) == list(again["ID"])
    assert set(train["ID"]).isdisjoint(holdout["ID"])


def test_column_mapping_renames_to_the_schema(tmp_path):
    path = tmp_path / "x.csv"
    pd.DataFrame({"cust_id": [1, 2], "limit": [10, 20]}).to_csv(path, index=False)
    frame = read_institution("bank_x", path, {"cust_id": "ID", "limit": "LIMIT_BAL"})
    assert list(frame.columns) == ["ID", "LIMIT_BAL"]
    with pytest.raises(InstitutionDataError, match=r"institution 'bank_x': .*x.csv: column mapping names columns not in the file: age"):
        read_institution("bank_x", path, {"age": "AGE"})


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        (b"", "file is empty"),
        (b"ID,AGE\n\xff\xfe\x00bad,1\n", "not UTF-8 text"),
        (b'ID,AGE\n1,"unterminated\n', "malformed CSV"),
    ],
)
def test_unreadable_files_name_the_institution_and_file(tmp_path, content, message):
    path = tmp_path / "extract.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InstitutionDataError) as error:
        read_institution("bank_q", path)
    assert str(error.value).startswith(f"institution 'bank_q': {path}: ")
    assert message in str(error.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_permission_denied(tmp_path):
    path = tmp_path / "locked.csv"
    path.write_text("ID\n1\n")
    path.chmod(0)
    with pytest.raises(InstitutionDataError, match="permission denied"):
        read_institution("bank_p", path)


def test_digest_changes_with_content_not_with_reading_twice(small_consortium):
    frame = read_institution("dune_finance", small_consortium["dune_finance"])
    assert frame_digest(frame) == frame_digest(read_institution("dune_finance", small_consortium["dune_finance"]))
    changed = frame.copy()
    changed.loc[0, "AGE"] += 1
    assert frame_digest(changed) != frame_digest(frame)


def test_fit_and_validation_partition_the_training_split(small_consortium):
    path = small_consortium["birch_credit_union"]
    split = dict(holdout_fraction=0.2, seed=4)
    parts = {part: load_part("birch_credit_union", path, None, LABEL_COLUMN, part=part, validation_fraction=0.1,
                             **split) for part in ("train", "holdout", "fit", "validation")}
    assert sorted(pd.concat([parts["fit"], parts["validation"]]).index) == sorted(parts["train"].index)
    assert len(parts["validation"]) == pytest.approx(0.1 * len(parts["train"]), abs=1)
    assert set(parts["validation"].index).isdisjoint(parts["holdout"].index)
    rates = [parts[p][LABEL_COLUMN].mean() for p in ("fit", "validation")]
    assert abs(rates[0] - rates[1]) < 0.01  # stratified
    with pytest.raises(ValueError, match="needs a validation_fraction"):
        load_part("birch_credit_union", path, None, LABEL_COLUMN, part="fit", **split)
