"""What an institution's monitoring of the champion sends: counts on a new extract of its scoring population.

Per master-scale grade (institution.scoring.SCORE_BANDS, best first): the rows, the sum of the champion's predicted
default probabilities and, where the extract carries matured outcomes, the defaults; per feature, the rows in each
bin fixed at development. Counts and sums only: the consortium's figures are the sums of the institutions' (a
secure sum gives the same), and the report's statistics (monitoring.statistics) need nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from contract.data import InstitutionDataError
from contract.schema import Schema
from institution.scoring import (
    CHUNK_ROWS,
    SCORE_BANDS,
    ScoringInputRejected,
    _as_written,
    _chunks,
    _RowChecks,
    _Tally,
    band_index,
)
from institution.statistics import FeatureSpace
from riskmodel.bins import FeatureBins
from riskmodel.model import RiskModel

GRADES = tuple(name for name, _ in SCORE_BANDS)  # the master scale's bands, A (best) to F
NUMERIC_BINS = 10  # a numeric feature's bins: the deciles of a normal with the consortium's mean and deviation


def _significant(value: float, digits: int = 3) -> float:
    return float(f"{value:.{digits}g}")


def development_bins(space: FeatureSpace) -> tuple[FeatureBins, ...]:
    """Each feature's bins, from the run's federated statistics alone (no row): a categorical feature's kept
    levels; a boolean's two values; a numeric feature's cut at the deciles of a normal with the consortium's mean
    and standard deviation, to three significant figures (roughly ten equal bins for a bell-shaped feature, fewer
    where rounding joins edges). Fixed with the model (its manifest), so every month counts the same bins."""
    bins, position = [], 0
    for f in space.layout.features:
        if f.kind == "categorical":
            bins.append(FeatureBins(f.name, levels=f.levels, coded=f.coded))
        elif f.kind == "boolean":
            bins.append(FeatureBins(f.name, edges=(0.5,)))
        else:
            # As float32, the precision the model standardizes with and a node receives them in: the node derives
            # the same bins from its run's feature space (node.service), whichever precision reached it.
            mean, std = float(np.float32(space.mean[position])), float(np.float32(space.std[position]))
            cuts = (NormalDist(mean, std).inv_cdf(k / NUMERIC_BINS) for k in range(1, NUMERIC_BINS))
            bins.append(FeatureBins(f.name, edges=tuple(sorted({_significant(c) for c in cuts}))))
        position += len(f.columns())
    return tuple(bins)


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


def counts_vector(counts: MonitoringCounts, bins: Sequence[FeatureBins]) -> np.ndarray:
    """The counts as one vector for a secure sum: rows, predictions and defaults per grade, whether the defaults
    are there (1 or 0: the consortium back-tests only when every institution's extract had its outcomes), then
    each feature's bins in the model's order. Every institution lays it out the same way from the model alone."""
    defaults = counts.defaults if counts.defaults is not None else [0] * len(GRADES)
    parts = [counts.rows, counts.predicted, defaults, [float(counts.defaults is not None)]]
    parts += [counts.features[b.name] for b in bins]
    return np.concatenate([np.asarray(part, dtype=np.float64) for part in parts])


def counts_from_vector(vector: np.ndarray, bins: Sequence[FeatureBins], institutions: int) -> MonitoringCounts:
    """The summed counts of `institutions` institutions from a secure sum of their counts_vector (counts rounded
    back to whole numbers: the fixed-point sum is exact for them)."""
    vector = np.asarray(vector, dtype=np.float64)
    n = len(GRADES)
    whole = np.rint(vector).astype(np.int64)
    with_outcomes = int(whole[3 * n])
    features, at = {}, 3 * n + 1
    for b in bins:
        size = len(b.labels)
        features[b.name] = whole[at : at + size].tolist()
        at += size
    if at != len(vector):
        raise ValueError(f"a monitoring sum of {len(vector)} values, where the model's grades and bins make {at}")
    return MonitoringCounts(
        rows=whole[:n].tolist(),
        predicted=vector[n : 2 * n].tolist(),
        defaults=whole[2 * n : 3 * n].tolist() if with_outcomes == institutions else None,
        features=features,
    )


REFERENCE_ARTIFACT = "monitoring/reference.json"  # where a version's run keeps its development reference


@dataclass(frozen=True)
class DevelopmentReference:
    """A version's development sample as monitoring counts it: each institution's development rows scored by the
    new model when it was evaluated, and their sum (the consortium's). Later months are compared with it. Under
    secure aggregation only the sum is known (`summed`, over the institutions `summed_over`)."""

    institutions: dict[str, MonitoringCounts]
    summed: MonitoringCounts | None = None
    summed_over: tuple[str, ...] = ()

    @property
    def consortium(self) -> MonitoringCounts:
        return self.summed if self.summed is not None else add_counts(list(self.institutions.values()))

    def to_json(self) -> dict:
        document: dict = {"institutions": {name: asdict(counts) for name, counts in self.institutions.items()}}
        if self.summed is not None:
            document["secure_sum"] = {"institutions": list(self.summed_over), "counts": asdict(self.summed)}
        return document

    @classmethod
    def from_json(cls, document: dict) -> DevelopmentReference:
        secure = document.get("secure_sum")
        return cls(
            {name: MonitoringCounts(**counts) for name, counts in document["institutions"].items()},
            MonitoringCounts(**secure["counts"]) if secure else None,
            tuple(secure["institutions"]) if secure else (),
        )


@dataclass(frozen=True)
class MonitoredExtract:
    """What monitoring made of one institution's extract: its counts (all that leaves), and how many of its rows
    the suite's per-row checks kept out of them."""

    counts: MonitoringCounts
    rows: int
    not_counted: int


def _outcomes(values: pd.Series, schema: Schema, path: Path) -> np.ndarray:
    """The label column as 0/1: every counted row needs a matured outcome, or none is back-tested."""
    label = schema.label
    text = values.map(lambda v: None if pd.isna(v) else _as_written(v))
    positive, negative = text == str(label.positive), text == str(label.negative)
    unknown = int((~positive & ~negative).sum())
    if unknown:
        raise InstitutionDataError(
            f"{path}: column {label.column} has {unknown} rows that are neither {label.positive!r} "
            f"({label.meaning}) nor {label.negative!r}: a back-test needs every row's matured outcome (leave the "
            f"column out to check stability alone)"
        )
    return positive.to_numpy(dtype=float)


def monitor_extract(
    path: Path,
    schema: Schema,
    model: RiskModel,
    columns: dict[str, str] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> MonitoredExtract:
    """Score an institution's extract of its scoring population with the champion, in chunks, and count it over
    the model's grades and development bins; with the schema's label column, also the defaults (a back-test).
    Rows that fail the suite's per-row checks are not counted (as scoring leaves them unscored). `columns` renames
    the institution's columns to the schema's (name in its file -> schema name). Runs where the rows are; returns
    counts only."""
    path = Path(path)
    if not path.is_file():
        raise InstitutionDataError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    renames = columns or {}
    header, chunks = _chunks(path, schema, chunk_rows)
    header = [renames.get(c, c) for c in header]
    absent = [c for c in schema.features if c not in header]
    if absent:
        raise ScoringInputRejected(path, schema.suite, [f"column {c} is present: failed" for c in absent])
    with_outcomes = schema.label.column in header
    checks, tally, parts = _RowChecks(schema), _Tally(), []
    for chunk in chunks:
        chunk = chunk.rename(columns=renames)
        typed, failed = checks.apply(chunk, tally)
        ok = failed == ""
        rows = typed.loc[ok]
        outcomes = _outcomes(chunk.loc[ok, schema.label.column], schema, path) if with_outcomes else None
        probabilities = model.predict_proba(rows) if len(rows) else np.zeros(0)
        parts.append(monitoring_counts(probabilities, rows, model.bins, outcomes))
        tally.rows += len(chunk)
    if tally.rows == 0:
        raise InstitutionDataError(f"{path}: a header line and no rows: nothing to monitor")
    counts = add_counts(parts)
    return MonitoredExtract(counts, tally.rows, tally.rows - counts.total)
