"""What an institution's evaluation sends for fair-lending tests: counts by protected group, score and outcome.

For each protected attribute of the schema (contract.schema.ProtectedAttribute) and each of its groups, over the
holdout rows one model scored: the rows and the bads; the rows approved at the decision (a probability below
evaluation.threshold) and the goods among them; the sum and the sum of squares of the probabilities; per
master-scale grade the rows, the summed probabilities and the bads (calibration per group); and per bin of a fixed
probability grid the goods and the bads (each group's AUC). Counts and sums only: the consortium's are the
institutions' sums, and every figure from them (fairness.figures) equals the same figure on the pooled rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from contract.schema import ProtectedAttribute, Schema
from institution.scoring import SCORE_BANDS, band_index
from riskmodel.bins import FeatureBins

MISSING = "(missing)"  # a row whose protected value is missing or in no group
# Bins of the probability for each group's AUC: even in logit space, as the evaluation's ROC grid.
SCORE_EDGES = 1 / (1 + np.exp(-np.linspace(-9, 9, 181)))


@dataclass(frozen=True)
class GroupCounts:
    """One group's counts over an institution's scored holdout rows (or, summed, the consortium's)."""

    rows: int
    bads: int
    approved: int
    approved_goods: int
    score_sum: float
    score_squares: float
    grade_rows: list[int]
    grade_predicted: list[float]
    grade_bads: list[int]
    bin_goods: list[int]
    bin_bads: list[int]

    @property
    def goods(self) -> int:
        return self.rows - self.bads


@dataclass(frozen=True)
class FairnessCounts:
    """Per protected attribute, per group (in the schema's order, then MISSING when some row had no group); for
    the new model also `proxies`: per attribute and feature, the development rows in each of the feature's bins
    (rows) by group (columns: the attribute's groups, then MISSING), from which each feature's association with
    the attribute follows."""

    attributes: dict[str, dict[str, GroupCounts]]
    proxies: dict[str, dict[str, list[list[int]]]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, document: dict) -> FairnessCounts:
        """From dataclasses.asdict of one (as an evaluation crosses)."""
        return cls(
            {
                name: {group: GroupCounts(**c) for group, c in groups.items()}
                for name, groups in document["attributes"].items()
            },
            document.get("proxies") or {},
        )


def proxy_counts(rows: pd.DataFrame, bins: Sequence[FeatureBins], schema: Schema) -> dict[str, dict[str, list]]:
    """Per protected attribute and model feature: `rows` counted by the feature's development bin and the group."""
    proxies = {}
    for name, attribute in schema.protected.items():
        groups = protected_groups(rows[attribute.column], attribute)
        columns = [*attribute.names, MISSING]
        proxies[name] = {
            b.name: np.array([b.counts(rows.loc[groups == group, b.name]) for group in columns]).T.tolist()
            for b in bins
        }
    return proxies


def protected_groups(values: pd.Series, attribute: ProtectedAttribute) -> np.ndarray:
    """Each row's group name (MISSING where the value is missing or in none)."""
    groups = np.full(len(values), MISSING, dtype=object)
    if attribute.groups is not None:
        for name, levels in attribute.groups.items():
            if all(isinstance(level, int) for level in levels):  # codes of a numeric column, compared as numbers
                numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
                groups[np.isin(numbers, np.asarray(levels, dtype=np.float64))] = name
            else:
                text = values.map(lambda v: None if pd.isna(v) else str(v)).to_numpy(dtype=object)
                groups[np.isin(text, [str(level) for level in levels])] = name
        return groups
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    known = ~np.isnan(numbers)
    band = np.searchsorted(np.asarray(attribute.cuts, dtype=float), numbers[known], side="right")
    groups[known] = np.asarray(attribute.bands, dtype=object)[band]
    return groups


def _group_counts(probabilities: np.ndarray, bad: np.ndarray, cutoff: float) -> GroupCounts:
    approved = probabilities < cutoff
    grade = band_index(probabilities)
    n = len(SCORE_BANDS)
    score_bin = np.searchsorted(SCORE_EDGES, probabilities, side="right")
    bins = len(SCORE_EDGES) + 1
    return GroupCounts(
        rows=int(len(probabilities)),
        bads=int(bad.sum()),
        approved=int(approved.sum()),
        approved_goods=int((approved & ~bad).sum()),
        score_sum=float(probabilities.sum()),
        score_squares=float(np.square(probabilities).sum()),
        grade_rows=np.bincount(grade, minlength=n).tolist(),
        grade_predicted=np.bincount(grade, weights=probabilities, minlength=n).tolist(),
        grade_bads=np.bincount(grade, weights=bad.astype(float), minlength=n).astype(int).tolist(),
        bin_goods=np.bincount(score_bin[~bad], minlength=bins).tolist(),
        bin_bads=np.bincount(score_bin[bad], minlength=bins).tolist(),
    )


def fairness_counts(
    probabilities: np.ndarray, rows: pd.DataFrame, outcomes: np.ndarray, schema: Schema, cutoff: float
) -> FairnessCounts | None:
    """The counts of one model's `probabilities` on `rows` (raw, with the protected columns) whose `outcomes` are
    1 for bad; None when the schema declares no protected attribute. Runs where the rows are."""
    if not schema.protected:
        return None
    probabilities = np.asarray(probabilities, dtype=np.float64)
    bad = np.asarray(outcomes).astype(bool)
    attributes = {}
    for name, attribute in schema.protected.items():
        groups = protected_groups(rows[attribute.column], attribute)
        names = [*attribute.names, *([MISSING] if (groups == MISSING).any() else [])]
        attributes[name] = {
            group: _group_counts(probabilities[groups == group], bad[groups == group], cutoff) for group in names
        }
    return FairnessCounts(attributes)


def with_proxies(counts: FairnessCounts, rows: pd.DataFrame, bins: Sequence[FeatureBins], schema: Schema):
    """`counts` with the proxies of `rows` (the development rows) over the model's `bins`."""
    return FairnessCounts(counts.attributes, proxy_counts(rows, bins, schema))


def add_fairness(parts: Sequence[FairnessCounts]) -> FairnessCounts:
    """The consortium's counts: the institutions' summed, group by group (a group one institution lacks adds 0)."""
    if not parts:
        raise ValueError("no institution's fairness counts to add")
    attributes: dict[str, dict[str, GroupCounts]] = {}
    for name in parts[0].attributes:
        order = list(dict.fromkeys(group for part in parts for group in part.attributes[name]))
        attributes[name] = {}
        for group in order:
            present = [part.attributes[name][group] for part in parts if group in part.attributes[name]]
            attributes[name][group] = GroupCounts(
                **{
                    field: (
                        np.sum([getattr(c, field) for c in present], axis=0).tolist()
                        if isinstance(getattr(present[0], field), list)
                        else type(getattr(present[0], field))(sum(getattr(c, field) for c in present))
                    )
                    for field in GroupCounts.__dataclass_fields__
                }
            )
    proxies = {}
    if all(part.proxies for part in parts):
        proxies = {
            name: {
                feature: np.sum([part.proxies[name][feature] for part in parts], axis=0).astype(int).tolist()
                for feature in features
            }
            for name, features in parts[0].proxies.items()
        }
    return FairnessCounts(attributes, proxies)


_SCALARS = ("rows", "bads", "approved", "approved_goods", "score_sum", "score_squares")
_LISTS = ("grade_rows", "grade_predicted", "grade_bads", "bin_goods", "bin_bads")


def _layout(schema: Schema, bins: Sequence[FeatureBins] | None) -> list[tuple[str, ...]]:
    """The fixed order of a fairness vector: every attribute's groups (MISSING included), then, with `bins`, every
    attribute's table of each feature's bins by group. The same at every institution: from the schema and model."""
    parts: list[tuple[str, ...]] = []
    for name, attribute in schema.protected.items():
        parts += [("group", name, group) for group in [*attribute.names, MISSING]]
    for name in schema.protected if bins is not None else ():
        parts += [("proxy", name, b.name) for b in bins or ()]
    return parts


def fairness_vector(counts: FairnessCounts | None, schema: Schema, bins: Sequence[FeatureBins] | None) -> np.ndarray:
    """Counts as one vector for a secure sum: a first 1 (0 where `counts` is None: the institution had none),
    then each group's counts and, with `bins`, the proxies, in _layout's order (absent groups as zeros)."""
    groups_per = {name: len(a.names) + 1 for name, a in schema.protected.items()}
    empty_group = [0.0] * (len(_SCALARS) + 3 * len(SCORE_BANDS) + 2 * (len(SCORE_EDGES) + 1))
    values = [1.0 if counts is not None else 0.0]
    by_bins = {b.name: b for b in bins or ()}
    for kind, name, key in _layout(schema, bins):
        if kind == "group":
            found = counts.attributes.get(name, {}).get(key) if counts is not None else None
            values += (
                [float(getattr(found, f)) for f in _SCALARS] + [float(v) for f in _LISTS for v in getattr(found, f)]
                if found is not None
                else empty_group
            )
        else:
            size = len(by_bins[key].labels) * groups_per[name]
            table = (counts.proxies.get(name, {}).get(key) if counts is not None else None) or [[0] * size]
            values += [float(v) for row in table for v in row]
    return np.asarray(values, dtype=np.float64)


def fairness_from_vector(
    vector: np.ndarray, schema: Schema, bins: Sequence[FeatureBins] | None
) -> tuple[FairnessCounts | None, int]:
    """The summed counts from a secure sum of fairness_vector's, and how many institutions had counts (None when
    not every institution had: a partial sum is not the consortium's). MISSING is kept only when it has rows."""
    vector = np.asarray(vector, dtype=np.float64)
    having, at = int(round(vector[0])), 1
    n, edges = len(SCORE_BANDS), len(SCORE_EDGES) + 1
    sizes = dict(zip(_LISTS, (n, n, n, edges, edges), strict=True))
    attributes: dict[str, dict[str, GroupCounts]] = {name: {} for name in schema.protected}
    proxies: dict[str, dict[str, list[list[int]]]] = {}
    by_bins = {b.name: b for b in bins or ()}
    for kind, name, key in _layout(schema, bins):
        if kind == "group":
            scalars = vector[at : at + len(_SCALARS)]
            at += len(_SCALARS)
            lists = {}
            for field_name in _LISTS:
                part = vector[at : at + sizes[field_name]]
                at += sizes[field_name]
                lists[field_name] = (
                    part.tolist() if field_name == "grade_predicted" else np.rint(part).astype(int).tolist()
                )
            whole = [int(round(v)) for v in scalars[:4]]
            counts = GroupCounts(*whole, float(scalars[4]), float(scalars[5]), **lists)
            if key != MISSING or counts.rows:
                attributes[name][key] = counts
        else:
            columns = len(schema.protected[name].names) + 1
            rows = len(by_bins[key].labels)
            table = np.rint(vector[at : at + rows * columns]).astype(int).reshape(rows, columns)
            at += rows * columns
            proxies.setdefault(name, {})[key] = table.tolist()
    if at != len(vector):
        raise ValueError(f"a fairness sum of {len(vector)} values, where the schema and model make {at}")
    return FairnessCounts(attributes, proxies), having
