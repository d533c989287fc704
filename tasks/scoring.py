"""Batch scoring: an institution's raw rows -> default probabilities and score bands, with the
registered model, after the rows pass the model's GX suite.

Runs where the rows are; writes one output row per input row (id, probability, band).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.data import read_institution
from tasks.schema import ID_COLUMN, LABEL_COLUMN

# Master scale: a band is the range of default probability up to its upper bound.
SCORE_BANDS = (("A", 0.02), ("B", 0.05), ("C", 0.10), ("D", 0.20), ("E", 0.40), ("F", 1.0))
# Scoring input has no label, and the suite's row-count minimum is for a training extract.
SCORING_IGNORED_CHECKS = ("expect_table_row_count_to_be_between",)
SCORING_INPUT = "scoring input"


class ScoringInputRejected(ValueError):
    """The input failed the suite: nothing was scored or written."""

    def __init__(self, path: Path, suite: str, reasons: list[str], data_docs: str | None):
        self.reasons, self.data_docs = reasons, data_docs
        super().__init__(f"{path}: rejected by suite {suite}, nothing was scored: " + "; ".join(reasons))


@dataclass(frozen=True)
class ScoringResult:
    model_name: str
    version: str
    rows: int
    output: str
    bands: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def score_band(probability: np.ndarray) -> np.ndarray:
    """The master-scale band (A best .. F worst) of each default probability."""
    edges = np.array([upper for _, upper in SCORE_BANDS[:-1]])
    return np.array([name for name, _ in SCORE_BANDS])[np.searchsorted(edges, probability, side="left")]


def score_file(
    tracking_uri: str, name: str, alias: str | None, version: str | None, input_path: Path, output_path: Path,
    expectations_dir: Path,
) -> ScoringResult:
    """Check `input_path` against the model's suite, score it, and write `output_path` (CSV) whole or not at all."""
    import mlflow

    from tasks.registry import resolve_version
    from tasks.validation import check_frame

    found = resolve_version(tracking_uri, name, alias, version)
    suite = found.tags.get("suite.name", "credit_default_v1")
    frame = read_institution(SCORING_INPUT, Path(input_path))
    _, errors, warnings, page = check_frame(
        frame, suite, expectations_dir, run_name=f"scoring-{Path(input_path).stem}",
        ignore_columns=(LABEL_COLUMN,), ignore_types=SCORING_IGNORED_CHECKS)
    if errors:
        raise ScoringInputRejected(Path(input_path), suite, errors, str(page))
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{found.version}")
    features = model.metadata.get_input_schema().input_names()
    fractional = [c for c in features if not np.all(np.mod(frame[c].to_numpy(dtype=float), 1) == 0)]
    if fractional:  # the schema's columns are whole NT$ amounts and codes
        raise ScoringInputRejected(Path(input_path), suite, [f"{c} has non-integer values" for c in fractional],
                                   str(page))
    probability = model.predict(frame[features].astype("int64"))["default_probability"].to_numpy(dtype=float)
    scored = pd.DataFrame({
        ID_COLUMN: frame[ID_COLUMN] if ID_COLUMN in frame.columns else np.arange(len(frame)),
        "default_probability": probability,
        "score_band": score_band(probability),
    })
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(f".{output_path.name}.partial")
    scored.to_csv(partial, index=False)
    os.replace(partial, output_path)
    bands = scored["score_band"].value_counts().reindex([b for b, _ in SCORE_BANDS], fill_value=0)
    return ScoringResult(name, str(found.version), len(scored), str(output_path),
                         {k: int(v) for k, v in bands.items()}, warnings)
