import numpy as np
import pandas as pd
import pytest

from consortium.local import LocalConsortium
from contract.data import Extract, Split, load_part
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
