"""What an institution's monitoring of the champion sends: counts on a new extract of its scoring population.

Per master-scale grade (institution.scoring.SCORE_BANDS, best first): the rows, the sum of the champion's predicted
default probabilities and, where the extract carries matured outcomes, the defaults; per feature, the rows in each
bin fixed at development. Counts and sums only: the consortium's figures are the sums of the institutions' (a
secure sum gives the same), and the report's statistics (monitoring.statistics) need nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from institution.scoring import SCORE_BANDS, band_index

GRADES = tuple(name for name, _ in SCORE_BANDS)  # the master scale's bands, A (best) to F


@dataclass(frozen=True)
class FeatureBins:
    """The development sample's bins of one feature: `edges` cut a numeric feature into len(edges) + 1 bins
    (a value on an edge goes to the bin above it); `levels` name a categorical feature's bins, and values that are
    none of them count in one more bin, "(other)". Missing values count in a last bin of their own."""

    name: str
    edges: tuple[float, ...] = ()
    levels: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        """A name per bin, in the order of the counts."""
        if self.levels:
            return (*self.levels, "(other)", "(missing)")
        bounds = ("-inf", *(f"{e:g}" for e in self.edges), "inf")
        return (*(f"[{low}, {high})" for low, high in zip(bounds, bounds[1:], strict=False)), "(missing)")

    def counts(self, values: np.ndarray | Sequence[object]) -> list[int]:
        """Rows per bin of `values` (numbers for a numeric feature, anything for a categorical one)."""
        if self.levels:
            text = np.asarray(values, dtype=object)
            missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in text], dtype=bool)
            index = {level: i for i, level in enumerate(self.levels)}
            which = np.array([index.get(str(v), len(self.levels)) for v in text], dtype=int)
            which[missing] = len(self.levels) + 1
            return np.bincount(which, minlength=len(self.levels) + 2).tolist()
        numbers = np.asarray(values, dtype=float)
        missing = np.isnan(numbers)
        which = np.searchsorted(np.asarray(self.edges, dtype=float), numbers[~missing], side="right")
        return [*np.bincount(which, minlength=len(self.edges) + 1).tolist(), int(missing.sum())]


@dataclass(frozen=True)
class MonitoringCounts:
    """One institution's (or, summed, the consortium's) monitoring counts. `defaults` is None where the
    extract carried no matured outcomes; lists follow GRADES and each feature's FeatureBins.labels."""

    rows: list[int]
    predicted: list[float]
    defaults: list[int] | None
    features: dict[str, list[int]]

    @property
    def total(self) -> int:
        return sum(self.rows)


def monitoring_counts(
    probabilities: np.ndarray,
    features: dict[str, np.ndarray | Sequence[object]],
    bins: Sequence[FeatureBins],
    outcomes: np.ndarray | None = None,
) -> MonitoringCounts:
    """Counts of one institution's scored rows: the champion's `probabilities`, the `features` it was given (by
    name, each binned as `bins` says) and, with matured `outcomes` (1: defaulted), the defaults per grade."""
    probabilities = np.asarray(probabilities, dtype=float)
    grade = band_index(probabilities)
    n = len(GRADES)
    defaults = None
    if outcomes is not None:
        outcome = np.asarray(outcomes, dtype=float)
        if outcome.shape != probabilities.shape or not np.isin(outcome, (0.0, 1.0)).all():
            raise ValueError("outcomes must be 0 or 1, one per scored row")
        defaults = np.bincount(grade, weights=outcome, minlength=n).astype(int).tolist()
    return MonitoringCounts(
        rows=np.bincount(grade, minlength=n).tolist(),
        predicted=np.bincount(grade, weights=probabilities, minlength=n).tolist(),
        defaults=defaults,
        features={b.name: b.counts(features[b.name]) for b in bins},
    )


def add_counts(parts: Sequence[MonitoringCounts]) -> MonitoringCounts:
    """The consortium's counts: the institutions' summed (defaults only when every part has them)."""
    if not parts:
        raise ValueError("no institution's counts to add")
    defaults = [p.defaults for p in parts if p.defaults is not None]
    return MonitoringCounts(
        rows=np.sum([p.rows for p in parts], axis=0).astype(int).tolist(),
        predicted=np.sum([p.predicted for p in parts], axis=0).tolist(),
        defaults=np.sum(defaults, axis=0).astype(int).tolist() if len(defaults) == len(parts) else None,
        features={
            name: np.sum([p.features[name] for p in parts], axis=0).astype(int).tolist() for name in parts[0].features
        },
    )
