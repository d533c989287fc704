"""Federated statistics: what each institution shares about its training rows (counts and sums), and
what the coordinator makes of them: the run's feature space (FeatureSpace: the layout, its standardization,
the label's prevalence).

One pass is enough: per numeric feature the count, sum and sum of squares of present values; per
categorical feature the count of each level. The consortium's means fill missing values, levels held
by fewer than the schema's `rare_level_min_rows` rows in all fold into '(other)', and the mean and
standard deviation of every encoded column follow exactly from the same sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from contract.data import Extract, Split, labels, load_part, part_rows, read_chunks, streamed
from contract.schema import CategoricalFeature, Schema
from riskmodel.layout import MISSING, FeatureEncoding, Layout


@dataclass(frozen=True)
class LocalStatistics:
    """What one institution shares about its training split: counts and sums, never a row."""

    institution: str
    count: int
    positives: int
    present: dict[str, int] = field(default_factory=dict)  # numeric and boolean: rows with a value
    sums: dict[str, float] = field(default_factory=dict)
    sums_of_squares: dict[str, float] = field(default_factory=dict)
    levels: dict[str, dict[str, int]] = field(default_factory=dict)  # categorical: rows per level, '(missing)'


def level_text(values: pd.Series, feature: CategoricalFeature) -> pd.Series:
    """A categorical column's levels as text, the form layouts and counts use (integer codes too)."""
    if feature.coded:
        return pd.to_numeric(values, errors="coerce").round().astype("Int64").astype(str)
    return values.astype(str)


def local_statistics(institution: str, rows: pd.DataFrame, schema: Schema, features: list[str]) -> LocalStatistics:
    """Counts and sums of `features` over an institution's rows, in float64."""
    present, sums, squares, levels = {}, {}, {}, {}
    for name in features:
        feature = schema.features[name]
        values = rows[name]
        if feature.type == "categorical":
            counts = level_text(values[values.notna()], feature).value_counts()
            levels[name] = {str(level): int(n) for level, n in counts.items()}
            if values.isna().any():
                levels[name][MISSING] = int(values.isna().sum())
        else:
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            numbers = numbers[~np.isnan(numbers)]
            present[name], sums[name], squares[name] = (
                int(len(numbers)),
                float(numbers.sum()),
                float(np.square(numbers).sum()),
            )
    return LocalStatistics(institution, int(len(rows)), int(labels(rows, schema).sum()), present, sums, squares, levels)


def add_statistics(a: LocalStatistics, b: LocalStatistics) -> LocalStatistics:
    """Two parts of one institution's rows counted as one (its chunks, read one at a time)."""

    def added(x: dict, y: dict) -> dict:
        return {key: x.get(key, 0) + y.get(key, 0) for key in {**x, **y}}

    return LocalStatistics(
        a.institution,
        a.count + b.count,
        a.positives + b.positives,
        added(a.present, b.present),
        added(a.sums, b.sums),
        added(a.sums_of_squares, b.sums_of_squares),
        {name: added(a.levels.get(name, {}), b.levels.get(name, {})) for name in {**a.levels, **b.levels}},
    )


def extract_statistics(extract: Extract, schema: Schema, features: list[str], split: Split) -> LocalStatistics:
    """`local_statistics` of an institution's training rows, read from its extract where it is: whole, or for a
    large file (contract.data.streamed) a chunk at a time over the same training rows (the holdout drawn from its
    label column first), in memory bounded by a chunk."""
    if not streamed(extract):
        return local_statistics(extract.institution, load_part(extract, schema, split, "train"), schema, features)
    order = part_rows(extract, schema, split)
    training = np.zeros(len(order["train"]) + len(order["holdout"]), dtype=bool)
    training[order["train"]] = True
    total, start = LocalStatistics(extract.institution, 0, 0), 0
    for chunk in read_chunks(extract, schema, list(dict.fromkeys([*features, schema.label.column]))):
        rows = chunk[training[start : start + len(chunk)]]
        start += len(chunk)
        total = add_statistics(total, local_statistics(extract.institution, rows, schema, features))
    return total


def consortium_layout(schema: Schema, features: list[str], statistics: list[LocalStatistics]) -> Layout:
    """The model's inputs from the institutions' counts: fill values, kept levels (rare ones fold)."""
    encodings = []
    for name in features:
        feature = schema.features[name]
        allows_missing = feature.missing is not None
        if feature.type == "categorical":
            totals: dict[str, int] = {}
            for s in statistics:
                for level, n in s.levels.get(name, {}).items():
                    totals[level] = totals.get(level, 0) + n
            totals.pop(MISSING, None)
            kept = {level for level, n in totals.items() if n >= schema.rare_level_min_rows}
            if feature.levels == "open":
                ordered = sorted(kept, key=lambda level: (-totals[level], level))
            else:
                ordered = [str(level) for level in feature.levels if str(level) in kept]
            encodings.append(
                FeatureEncoding(name, "categorical", tuple(ordered), indicator=allows_missing, coded=feature.coded)
            )
            continue
        fill = 0.0
        if allows_missing:
            if feature.missing.impute == "constant":
                fill = float(feature.missing.value)
            else:
                present = sum(s.present[name] for s in statistics)
                fill = sum(s.sums[name] for s in statistics) / present if present else 0.0
        encodings.append(FeatureEncoding(name, feature.type, fill=fill, indicator=allows_missing))
    return Layout(tuple(encodings))


def _column_sums(encoding: FeatureEncoding, s: LocalStatistics) -> list[tuple[float, float]]:
    """(sum, sum of squares) of each of the feature's encoded columns over one institution's rows."""
    if encoding.kind == "categorical":
        counts = s.levels.get(encoding.name, {})
        missing = counts.get(MISSING, 0)
        kept = [counts.get(level, 0) for level in encoding.levels]
        other = s.count - sum(kept) - (missing if encoding.indicator else 0)
        columns = [*kept, other, *([missing] if encoding.indicator else [])]
        return [(float(n), float(n)) for n in columns]  # 0/1 columns: sum of squares = sum
    absent = s.count - s.present[encoding.name]
    value = (
        s.sums[encoding.name] + absent * encoding.fill,
        s.sums_of_squares[encoding.name] + absent * encoding.fill**2,
    )
    return [value, *([(float(absent), float(absent))] if encoding.indicator else [])]


def standardization(layout: Layout, statistics: list[LocalStatistics]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean and (population) standard deviation of every encoded column, exactly, from the sums.

    A constant column gets std 1 so that standardizing it cannot divide by zero.
    """
    count = sum(s.count for s in statistics)
    if count == 0:
        raise ValueError("no rows to standardize: every institution reported zero rows")
    sums = np.array(
        [[pair for f in layout.features for pair in _column_sums(f, s)] for s in statistics], dtype=np.float64
    ).sum(axis=0)
    mean = sums[:, 0] / count
    std = np.sqrt(np.maximum(sums[:, 1] / count - np.square(mean), 0.0))
    std[std <= 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0
    return mean, std


@dataclass(frozen=True)
class FeatureSpace:
    """One run's prepared features, made once from the federated statistics and passed whole: the schema and how
    every institution splits its rows, the layout that encodes them, each encoded column's pooled mean and
    standard deviation (the exported model standardizes with them), and the rows and positives they came from
    (None at a node, which encodes its rows in the space the coordinator sent and needs no totals)."""

    schema: Schema
    layout: Layout
    split: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rows: int | None = None
    positives: int | None = None

    @property
    def base_rate(self) -> float:
        """Positives over rows: where a network's output starts."""
        return self._totals()[1] / max(1, self._totals()[0])

    def positive_weight(self, weighting: float | str) -> float:
        """The loss weight of a positive example: as configured, or `balanced` (negatives per positive)."""
        if weighting != "balanced":
            return float(weighting)
        rows, positives = self._totals()
        if positives == 0 or positives == rows:
            raise ValueError("a balanced positive-class weight needs both classes in the training data")
        return (rows - positives) / positives

    def _totals(self) -> tuple[int, int]:
        if self.rows is None or self.positives is None:
            raise ValueError("this feature space has no row totals (a node's copy of the coordinator's)")
        return self.rows, self.positives


def feature_space(schema: Schema, features: list[str], split: Split, statistics: list[LocalStatistics]) -> FeatureSpace:
    """The feature space the institutions' statistics give: layout, standardization, prevalence."""
    layout = consortium_layout(schema, features, statistics)
    mean, std = standardization(layout, statistics)
    return FeatureSpace(
        schema,
        layout,
        split,
        tuple(float(v) for v in mean),
        tuple(float(v) for v in std),
        sum(s.count for s in statistics),
        sum(s.positives for s in statistics),
    )


def _statistics_slots(schema: Schema, features: list[str]) -> list[tuple[str, str, str]]:
    """The fixed order of every count and sum an institution's statistics hold, from the schema alone (so that
    a secure sum can add institutions' statistics as vectors). Needs declared levels: an open level set would
    have to name an institution's levels in the clear."""
    slots = [("count", "", ""), ("positives", "", "")]
    for name in features:
        feature = schema.features[name]
        if feature.type == "categorical":
            if feature.levels == "open":
                raise ValueError(
                    f"secure aggregation needs the levels of categorical feature '{name}' declared in "
                    f"schema {schema.name} (it has open levels, whose names would be sent in the clear)"
                )
            slots += [("levels", name, str(level)) for level in feature.levels] + [("levels", name, MISSING)]
        else:
            slots += [("present", name, ""), ("sums", name, ""), ("sums_of_squares", name, "")]
    return slots


def statistics_vector(statistics: LocalStatistics, schema: Schema, features: list[str]) -> np.ndarray:
    """An institution's statistics as one vector (float64), in `_statistics_slots` order."""
    values = []
    for kind, name, level in _statistics_slots(schema, features):
        if kind in ("count", "positives"):
            values.append(getattr(statistics, kind))
        elif kind == "levels":
            counts = statistics.levels.get(name, {})
            unknown = set(counts) - {str(level) for level in schema.features[name].levels} - {MISSING}
            if unknown:  # validation stops undeclared levels; never send one in the clear
                raise ValueError(f"feature '{name}' has {len(unknown)} level(s) the schema does not declare")
            values.append(counts.get(level, 0))
        else:
            values.append(getattr(statistics, kind)[name])
    return np.asarray(values, dtype=np.float64)


def statistics_from_vector(
    values: np.ndarray, schema: Schema, features: list[str], institution: str = "consortium"
) -> LocalStatistics:
    """The consortium's statistics from the sum of the institutions' vectors (counts rounded back to integers)."""
    found = {"count": 0, "positives": 0, "present": {}, "sums": {}, "sums_of_squares": {}, "levels": {}}
    for (kind, name, level), value in zip(_statistics_slots(schema, features), values, strict=True):
        if kind in ("count", "positives"):
            found[kind] = int(round(value))
        elif kind == "levels":
            if round(value):
                found["levels"].setdefault(name, {})[level] = int(round(value))
            found["levels"].setdefault(name, {})
        elif kind == "present":
            found["present"][name] = int(round(value))
        else:
            found[kind][name] = float(value)
    return LocalStatistics(institution, **found)
