"""The feature layout: how raw schema columns become the model's numeric inputs, inside the model.

Numeric and boolean features pass through (missing values filled, with a 0/1 missing indicator
beside them where the schema allows them); categorical ones become one 0/1 column per kept level,
plus '(other)' for folded rare levels and levels never seen in training, and '(missing)' where
missing values are allowed. Built at the coordinator from federated counts, so it holds no row.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

OTHER = "(other)"
MISSING = "(missing)"


@dataclass(frozen=True)
class FeatureEncoding:
    """One raw feature's part of the input: `kind` numeric/boolean (one column, `fill` for missing
    values and an indicator when `indicator`) or categorical (`levels`, then '(other)', then '(missing)'
    when `indicator`). `coded`: integer category codes rather than text."""

    name: str
    kind: str
    levels: tuple[str, ...] = ()
    fill: float = 0.0
    indicator: bool = False
    coded: bool = False

    def columns(self) -> list[str]:
        if self.kind == "categorical":
            return [f"{self.name}={level}" for level in (*self.levels, OTHER, *([MISSING] if self.indicator else []))]
        return [self.name, *([f"{self.name}={MISSING}"] if self.indicator else [])]


@dataclass(frozen=True)
class Layout:
    """The model's inputs, feature by feature, in order."""

    features: tuple[FeatureEncoding, ...] = field(default_factory=tuple)

    @property
    def raw_features(self) -> list[str]:
        return [f.name for f in self.features]

    def columns(self) -> list[str]:
        return [column for f in self.features for column in f.columns()]

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw rows (the schema's columns, any extra ignored) -> the model's float input matrix."""
        parts = []
        for f in self.features:
            values = frame[f.name]
            missing = values.isna().to_numpy()
            if f.kind == "categorical":
                if f.coded:
                    text = pd.to_numeric(values, errors="coerce").round().astype("Int64").astype(str)
                else:
                    text = values.astype(str)
                codes = pd.Categorical(text, categories=list(f.levels)).codes
                width = len(f.levels) + 1 + int(f.indicator)
                index = np.where(codes >= 0, codes, len(f.levels))  # unseen or folded -> (other)
                if f.indicator:
                    index = np.where(missing, len(f.levels) + 1, index)
                else:
                    index = np.where(missing, len(f.levels), index)
                block = np.zeros((len(frame), width))
                block[np.arange(len(frame)), index] = 1.0
                parts.append(block)
            else:
                numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
                missing = np.isnan(numbers)
                parts.append(np.where(missing, f.fill, numbers)[:, None])
                if f.indicator:
                    parts.append(missing.astype(np.float64)[:, None])
        return np.hstack(parts) if parts else np.zeros((len(frame), 0))

    def encode_native(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw rows -> one column per feature, for engines with native categorical and missing-value support
        (XGBoost): numbers as they are (missing stays NaN), a categorical feature as the index of its kept
        level, unseen and folded levels as one more index ('(other)'), missing as NaN."""
        columns = []
        for f in self.features:
            values = frame[f.name]
            if f.kind == "categorical":
                text = (
                    pd.to_numeric(values, errors="coerce").round().astype("Int64").astype(str)
                    if f.coded
                    else values.astype(str)
                )
                codes = pd.Categorical(text, categories=list(f.levels)).codes.astype(np.float64)
                codes[codes < 0] = len(f.levels)
                codes[values.isna().to_numpy()] = np.nan
                columns.append(codes)
            else:
                columns.append(pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64))
        return np.column_stack(columns) if columns else np.zeros((len(frame), 0))

    def native_types(self) -> list[str]:
        """XGBoost's feature types of `encode_native`'s columns: 'c' categorical, 'q' numeric."""
        return ["c" if f.kind == "categorical" else "q" for f in self.features]

    def to_json(self) -> str:
        return json.dumps({"features": [asdict(f) for f in self.features]})

    @classmethod
    def from_json(cls, text: str) -> Layout:
        return cls(tuple(FeatureEncoding(**{**f, "levels": tuple(f["levels"])}) for f in json.loads(text)["features"]))
