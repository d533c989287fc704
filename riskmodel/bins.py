"""The development sample's bins of each feature, fixed when a model is trained and stored in its manifest, so
that every later month's monitoring counts the same bins the development reference counted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class FeatureBins:
    """One feature's bins: `edges` cut a numeric feature into len(edges) + 1 bins (a value on an edge goes to the
    bin above it); `levels` name a categorical feature's bins (`coded`: integer codes, compared as whole numbers),
    and values that are none of them count in one more bin, "(other)". Missing values count in a last bin."""

    name: str
    edges: tuple[float, ...] = ()
    levels: tuple[str, ...] = ()
    coded: bool = False

    @property
    def labels(self) -> tuple[str, ...]:
        """A name per bin, in the order of the counts."""
        if self.levels:
            return (*self.levels, "(other)", "(missing)")
        bounds = ("-inf", *(f"{e:g}" for e in self.edges), "inf")
        return (*(f"[{low}, {high})" for low, high in zip(bounds, bounds[1:], strict=False)), "(missing)")

    def counts(self, values: np.ndarray | Sequence[object] | pd.Series) -> list[int]:
        """Rows per bin of `values` (numbers for a numeric feature, levels for a categorical one)."""
        series = pd.Series(np.asarray(values, dtype=object) if not isinstance(values, pd.Series) else values)
        if self.levels:
            missing = series.isna().to_numpy()
            text = (
                pd.to_numeric(series, errors="coerce").round().astype("Int64").astype(str)
                if self.coded
                else series.astype(str)
            )
            which = pd.Categorical(text, categories=list(self.levels)).codes.astype(int)
            which[which < 0] = len(self.levels)
            which[missing] = len(self.levels) + 1
            return np.bincount(which, minlength=len(self.levels) + 2).tolist()
        numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
        missing = np.isnan(numbers)
        which = np.searchsorted(np.asarray(self.edges, dtype=float), numbers[~missing], side="right")
        return [*np.bincount(which, minlength=len(self.edges) + 1).tolist(), int(missing.sum())]

    def to_manifest(self) -> dict:
        return {"name": self.name, "edges": list(self.edges), "levels": list(self.levels), "coded": self.coded}

    @classmethod
    def from_manifest(cls, entry: dict) -> FeatureBins:
        return cls(entry["name"], tuple(float(e) for e in entry["edges"]), tuple(entry["levels"]), entry["coded"])
