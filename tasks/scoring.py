"""Batch scoring: an institution's raw rows -> probabilities (the schema's output column) and score
bands, with the registered model, after the rows pass the model's suite; for a scorecard also the
score points and the reasons that cost each row the most points.

Runs where the rows are; writes one output row per input row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.data import read_institution, spreadsheet_safe
from tasks.schema import Schema, SchemaError, load_schema

# Master scale: a band is the range of the probability up to its upper bound.
SCORE_BANDS = (("A", 0.02), ("B", 0.05), ("C", 0.10), ("D", 0.20), ("E", 0.40), ("F", 1.0))
# Scoring input has no label, and the suite's table-level checks (size, constant columns, repeated
# rows) describe a training extract, not a batch of applications.
SCORING_IGNORED_CHECKS = ("expect_table_row_count_to_be_between", "expect_column_unique_value_count_to_be_between",
                          "expect_compound_columns_to_be_unique")


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
    output_column: str = "probability"


def score_band(probability: np.ndarray) -> np.ndarray:
    """The master-scale band (A best .. F worst) of each probability."""
    edges = np.array([upper for _, upper in SCORE_BANDS[:-1]])
    return np.array([name for name, _ in SCORE_BANDS])[np.searchsorted(edges, probability, side="left")]


def model_schema(tags: dict[str, str], reference: str) -> Schema:
    """The schema version a registered model was trained on, from the committed schemas."""
    name, version = tags.get("schema.name"), tags.get("schema.version")
    if not name:
        raise LookupError(f"{reference} records no schema (registered before schemas existed); retrain it to score")
    try:
        schema = load_schema(name)
    except SchemaError as error:
        raise LookupError(f"{reference} was trained on schema {name}: {error}") from None
    if str(schema.version) != version:
        raise LookupError(f"{reference} was trained on schema {name} version {version}, but schemas/{name}.yaml is "
                          f"version {schema.version}: score with a version trained on it")
    return schema


def score_file(
    tracking_uri: str, name: str, alias: str | None, version: str | None, input_path: Path, output_path: Path,
    expectations_dir: Path, reasons: int = 0,
) -> ScoringResult:
    """Check `input_path` against the model's suite, score it, and write `output_path` (CSV) whole or not
    at all. A categorical level the model never saw is scored as '(other)', with a warning. With
    `reasons`, a scorecard's rows also get their score points and that many reason codes."""
    import mlflow

    from riskmodel.scorecard import score_points
    from tasks.versions import resolve_version
    from tasks.validation import check_frame

    found = resolve_version(tracking_uri, name, alias, version)
    reference = f"{name}/{found.version}"
    schema = model_schema(found.tags, reference)
    frame = read_institution(None, Path(input_path), schema)  # the scorer's own file: errors name the path
    lenient = {("expect_column_values_to_be_in_set", column) for column in schema.categorical()}
    checked = check_frame(  # scoring is the institution's own: it reads example values
        frame, schema.suite, expectations_dir, run_name=f"scoring-{Path(input_path).stem}",
        ignore_columns=(schema.label.column,), ignore_types=SCORING_IGNORED_CHECKS, lenient=lenient)
    errors, warnings, page = checked.local_errors, checked.local_warnings, checked.local_page
    if errors:
        raise ScoringInputRejected(Path(input_path), schema.suite, errors, str(page))
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{found.version}")
    features = model.metadata.get_input_schema().input_names()
    probability = model.predict(frame[features])[schema.output].to_numpy(dtype=float)
    scored = pd.DataFrame({
        schema.id or "row": frame[schema.id] if schema.id in frame.columns else np.arange(len(frame)),
        schema.output: probability,
        "score_band": score_band(probability),
    })
    if reasons:
        riskmodel = model.unwrap_python_model().model
        if riskmodel.scaling is None:
            raise LookupError(f"{reference} is not a scorecard (a logistic regression): it has no points or reason codes")
        scored = pd.concat([scored, score_points(riskmodel, frame, reasons).reset_index(drop=True)], axis=1)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(f".{output_path.name}.partial")
    spreadsheet_safe(scored).to_csv(partial, index=False)  # a credit officer opens it in a spreadsheet
    os.replace(partial, output_path)
    bands = scored["score_band"].value_counts().reindex([b for b, _ in SCORE_BANDS], fill_value=0)
    return ScoringResult(name, str(found.version), len(scored), str(output_path),
                         {k: int(v) for k, v in bands.items()}, warnings, schema.output)
