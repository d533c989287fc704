import numpy as np
import pandas as pd
import pytest

from consortium.local import LocalConsortium
from contract.data import Extract, Split, load_part, load_parts
from contract.schema import Missing, load_schema
from institution.statistics import (
    consortium_layout,
    feature_space,
    local_statistics,
    standardization,
)
from riskmodel.layout import Layout
from tasks.per_institution import compute_local_statistics

CREDIT = load_schema("credit_default")
GERMAN = load_schema("german_credit")


def _train_parts(consortium, schema, split):
    return {name: load_part(Extract(name, path), schema, split, "train") for name, path in consortium.items()}


def test_federated_statistics_equal_pooled_statistics_without_pooling(small_consortium):
    split, features = Split(0.2, 0.1, 7), list(CREDIT.features)
    consortium = LocalConsortium(tuple(Extract(name, path) for name, path in small_consortium.items()))
    per_institution = [
        compute_local_statistics.fn(consortium, name, CREDIT, features, split) for name in consortium.names
    ]
    layout = consortium_layout(CREDIT, features, per_institution)
    mean, std = standardization(layout, per_institution)
    # The reference pools the same training splits; only the test ever sees them together.
    pooled = np.concatenate([layout.encode(rows) for rows in _train_parts(small_consortium, CREDIT, split).values()])
    assert layout.columns() == features  # numeric features pass through, in order
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(std, pooled.std(axis=0), rtol=1e-9)
    assert sum(s.count for s in per_institution) == len(pooled)


def test_categorical_levels_are_one_hot_from_counts_rare_ones_fold_into_other(tmp_path):
    from contract.synthetic import synthesize

    consortium = synthesize(tmp_path, 3, seed=5, rows_scale=0.1, schema=GERMAN)
    split, features = Split(0.2, 0.1, 0), list(GERMAN.features)
    parts = _train_parts(consortium, GERMAN, split)
    for rows in parts.values():
        rows.loc[rows["purpose"] == "retraining", "purpose"] = "business"
    parts["alder_bank"].loc[parts["alder_bank"].index[:3], "purpose"] = "retraining"  # 3 rows, all told
    statistics = [local_statistics(name, rows, GERMAN, features) for name, rows in parts.items()]
    assert statistics[0].levels["purpose"]["retraining"] == 3  # counts leave an institution ...
    layout = consortium_layout(GERMAN, features, statistics)
    purpose = next(f for f in layout.features if f.name == "purpose")
    assert "retraining" not in purpose.levels  # ... but a level this rare is folded and never named again
    assert "purpose=(other)" in layout.columns() and all(
        level in GERMAN.features["purpose"].levels for level in purpose.levels
    )
    mean, std = standardization(layout, statistics)
    pooled = np.concatenate([layout.encode(rows) for rows in parts.values()])
    np.testing.assert_allclose(mean, pooled.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(std, np.where(pooled.std(axis=0) > 0, pooled.std(axis=0), 1.0), atol=1e-12)
    retraining = layout.encode(parts["alder_bank"].iloc[:1])
    assert retraining[0, layout.columns().index("purpose=(other)")] == 1.0


def test_missing_values_are_filled_with_the_consortium_mean_and_flagged():
    schema = load_schema("credit_default").model_copy(deep=True)
    schema.features["AGE"] = schema.features["AGE"].model_copy(update={"missing": Missing(max_rate=0.5)})
    a = pd.DataFrame({"AGE": [20.0, np.nan, 40.0], CREDIT.label.column: [0, 1, 0]})
    b = pd.DataFrame({"AGE": [60.0], CREDIT.label.column: [1]})
    statistics = [local_statistics("a", a, schema, ["AGE"]), local_statistics("b", b, schema, ["AGE"])]
    layout = consortium_layout(schema, ["AGE"], statistics)
    assert layout.columns() == ["AGE", "AGE=(missing)"] and layout.features[0].fill == 40.0
    np.testing.assert_array_equal(layout.encode(a), [[20, 0], [40, 1], [40, 0]])
    mean, _ = standardization(layout, statistics)
    np.testing.assert_allclose(mean, [40.0, 0.25])
    assert Layout.from_json(layout.to_json()) == layout


def test_statistics_carry_only_aggregates():
    rows = pd.DataFrame({"AGE": [30, 40, 50], CREDIT.label.column: [1, 0, 1]})
    stats = local_statistics("bank", rows, CREDIT, ["AGE"])
    assert (stats.count, stats.positives, stats.present, stats.sums, stats.sums_of_squares) == (
        3,
        2,
        {"AGE": 3},
        {"AGE": 120.0},
        {"AGE": 5000.0},
    )


def test_a_balanced_positive_weight_is_negatives_per_positive_over_all_institutions():
    def stats(name, positives, negatives):
        rows = pd.DataFrame(
            {"AGE": [30] * (positives + negatives), CREDIT.label.column: [1] * positives + [0] * negatives}
        )
        return local_statistics(name, rows, CREDIT, ["AGE"])

    def space(*statistics):
        return feature_space(CREDIT, ["AGE"], Split(0.2, 0.1, 7), list(statistics))

    both = space(stats("a", 1, 9), stats("b", 3, 27))
    assert both.positive_weight("balanced") == 36 / 4
    assert both.positive_weight(2.5) == 2.5  # as configured
    assert both.base_rate == 4 / 40
    with pytest.raises(ValueError, match="both classes"):
        space(stats("c", 0, 3)).positive_weight("balanced")


def test_constant_feature_gets_unit_std():
    label = CREDIT.label.column
    stats = [
        local_statistics("a", pd.DataFrame({"AGE": [1, 2], "SEX": [1, 1], label: [0, 1]}), CREDIT, ["AGE", "SEX"]),
        local_statistics("b", pd.DataFrame({"AGE": [3], "SEX": [1], label: [0]}), CREDIT, ["AGE", "SEX"]),
    ]
    mean, std = standardization(consortium_layout(CREDIT, ["AGE", "SEX"], stats), stats)
    np.testing.assert_allclose(mean, [2.0, 1.0])
    np.testing.assert_allclose(std, [np.sqrt(2 / 3), 1.0])


def _pinned(name: str, path, columns=None) -> Extract:
    from contract.data import read_extract

    extract = Extract(name, path, dict(columns or {}))
    return extract.validated(read_extract(extract, CREDIT if "german" not in str(path) else GERMAN)[1])


@pytest.fixture
def chunked(monkeypatch):
    """Every extract counts as large (read in chunks), in chunks of 333 rows (strata and chunks never align)."""
    import contract.data

    monkeypatch.setattr(contract.data, "STREAM_ABOVE_BYTES", 0)
    monkeypatch.setattr(contract.data, "CHUNK_ROWS", 333)


def _same_statistics(whole, chunks) -> None:
    assert (chunks.count, chunks.positives, chunks.present, chunks.levels) == (
        whole.count,
        whole.positives,
        whole.present,
        whole.levels,
    )
    assert chunks.sums == pytest.approx(whole.sums, rel=1e-12)
    assert chunks.sums_of_squares == pytest.approx(whole.sums_of_squares, rel=1e-12)


def test_a_large_extract_is_counted_a_chunk_at_a_time_to_the_same_statistics(tmp_path, small_consortium, monkeypatch):
    """CSV (also under a column mapping) and Parquet, numeric and categorical features: the chunked statistics of the
    training rows are the whole read's (the same holdout drawn), counts exactly, sums to float rounding."""
    import contract.data
    import institution.statistics
    from contract.synthetic import synthesize
    from institution.statistics import extract_statistics

    split = Split(0.2, 0.1, 7)
    german = synthesize(tmp_path / "german", 1, seed=2, rows_scale=0.5, schema=GERMAN)
    [(german_name, german_path)] = german.items()
    renamed = tmp_path / "renamed.csv"
    pd.read_csv(small_consortium["birch_credit_union"]).rename(columns={"AGE": "age_years"}).to_csv(
        renamed, index=False
    )
    parquet = tmp_path / "cedar.parquet"
    pd.read_csv(small_consortium["cedar_savings"]).to_parquet(parquet)
    cases = [
        (_pinned("alder_bank", small_consortium["alder_bank"]), CREDIT),
        (_pinned("birch_credit_union", renamed, {"age_years": "AGE"}), CREDIT),
        (_pinned("cedar_savings", parquet), CREDIT),
        (_pinned(german_name, german_path), GERMAN),
    ]
    for extract, schema in cases:
        features = [f for f in schema.features if f not in schema.protected]
        assert not contract.data.streamed(extract)
        whole = extract_statistics(extract, schema, features, split)
        seen: list[int] = []

        def counted(*args, seen=seen, **kwargs):
            for chunk in contract.data.read_chunks(*args, **kwargs):
                seen.append(len(chunk))
                yield chunk

        with monkeypatch.context() as patch:
            patch.setattr(contract.data, "STREAM_ABOVE_BYTES", 0)
            patch.setattr(contract.data, "CHUNK_ROWS", 333)
            patch.setattr(institution.statistics, "read_chunks", counted)
            assert contract.data.streamed(extract)
            _same_statistics(whole, extract_statistics(extract, schema, features, split))
        assert len(seen) > 1 and max(seen) <= 333  # never more than a chunk of rows in memory


def test_the_parts_drawn_from_the_label_column_are_the_whole_reads_parts_in_its_order(small_consortium):
    """train, holdout, fit and validation as load_parts splits the whole frame, row for row and in its order (the
    order a network's client data is shuffled from)."""
    from contract.data import part_rows, read_extract

    extract = _pinned("birch_credit_union", small_consortium["birch_credit_union"])
    split = Split(0.2, 0.1, 7)
    whole = load_parts(extract, CREDIT, split, ("train", "holdout", "fit", "validation"))
    frame, _ = read_extract(extract, CREDIT)
    assert list(frame.index) == list(range(len(frame)))  # positions in the file
    for part, rows in part_rows(extract, CREDIT, split).items():
        assert list(rows) == list(whole[part].index), part


def test_a_large_extract_changed_after_validation_stops_its_chunked_statistics(tmp_path, small_consortium, chunked):
    """The chunks' bytes are digested as they are parsed: a file replaced after validation is refused once read,
    before any figure of it is returned."""
    from contract.data import InstitutionDataError
    from institution.statistics import extract_statistics

    path = tmp_path / "dune.csv"
    path.write_bytes(small_consortium["dune_finance"].read_bytes())
    extract = _pinned("dune_finance", path)
    frame = pd.read_csv(path)
    frame.loc[len(frame) - 1, "LIMIT_BAL"] = frame["LIMIT_BAL"].iloc[-1] + 1000  # one value, in the last chunk
    frame.to_csv(path, index=False)
    with pytest.raises(
        InstitutionDataError, match="institution 'dune_finance'.*the file changed after it was validated"
    ):
        extract_statistics(extract, CREDIT, ["LIMIT_BAL", "AGE"], Split(0.2, 0.1, 7))


def test_a_text_level_that_looks_like_a_number_is_read_as_the_file_writes_it_whole_or_in_chunks(tmp_path, monkeypatch):
    """A branch code "01" stays "01" and "7" stays "7" where the column has gaps (parsed as numbers they became 1.0
    and 7.0 in a whole read, and 7 or 7.0 chunk by chunk): the same levels counted either way."""
    import contract.data
    from contract.schema import parse_schema
    from contract.synthetic import synthesize
    from institution.statistics import extract_statistics

    base = GERMAN.model_dump(by_alias=True)
    branch = {"type": "categorical", "levels": "open", "missing": {"max_rate": 0.5}}
    schema = parse_schema({**base, "features": {**base["features"], "branch": branch}}, "german_credit.yaml")
    [(name, source)] = synthesize(tmp_path / "src", 1, seed=4, rows_scale=0.5, schema=GERMAN).items()
    frame = pd.read_csv(source)
    codes = np.array(["01", "7", ""], dtype=object)[np.arange(len(frame)) % 3]
    codes[: len(frame) // 2][codes[: len(frame) // 2] == ""] = "01"  # the first half has no gap: chunks there are whole
    frame["branch"] = codes
    path = tmp_path / "with_branch.csv"
    frame.to_csv(path, index=False)
    extract = Extract(name, path)
    from contract.data import read_extract

    extract = extract.validated(read_extract(extract, schema)[1])
    split = Split(0.2, 0.1, 1)
    whole = extract_statistics(extract, schema, ["branch", "credit_amount"], split)
    assert set(whole.levels["branch"]) == {"01", "7", "(missing)"}
    monkeypatch.setattr(contract.data, "STREAM_ABOVE_BYTES", 0)
    monkeypatch.setattr(contract.data, "CHUNK_ROWS", 100)
    _same_statistics(whole, extract_statistics(extract, schema, ["branch", "credit_amount"], split))
