"""Scoring: an institution's raw rows -> probabilities (the schema's output column) and score bands with
the registered model, each row on its own; for a scorecard also the score points and the reasons that
cost each row the most points.

Each row is checked against the per-row checks of the model's suite (types, missing values where the
schema allows none, ranges, code sets): a row that fails one is written unscored with the failed checks
in `not_scored_because`, and the rest are scored. What describes the batch (missing-value rates above
what training allowed, levels the model never saw, undeclared columns) is a warning. A file that cannot
be read as the schema's table (not found, not UTF-8, cut mid-line, a declared column absent) is refused
whole. The input is read and written in chunks, so memory does not grow with the input; the output is
replaced only when every row is written. Runs where the rows are.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from contract.data import (
    _EXAMPLES,
    _FALSE,
    _INT64_LIMIT,
    _OTHER_DELIMITERS,
    _TRUE,
    InstitutionDataError,
    _repeated_columns,
    _unescaped,
    cut_last_line,
    headerless,
    spreadsheet_safe,
)
from contract.schema import Schema, SchemaError, load_schema, percent
from contract.suites import expected_checks, require_current_suite
from errors import ExitCode, FedriskError

# Master scale: a band is the range of the probability up to its upper bound.
SCORE_BANDS = (("A", 0.02), ("B", 0.05), ("C", 0.10), ("D", 0.20), ("E", 0.40), ("F", 1.0))
REJECTED_COLUMN = "not_scored_because"
CHUNK_ROWS = 50_000
_TAIL_BYTES = 1 << 16


class ScoringInputRejected(FedriskError, ValueError):
    """The file is not the schema's table (a declared column is absent): nothing was scored or written."""

    exit_code = ExitCode.USAGE

    def __init__(self, path: Path, suite: str, reasons: list[str]):
        self.reasons = reasons
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
    rejected: dict[str, int] = field(default_factory=dict)  # failed check -> rows it kept from scoring

    @property
    def scored(self) -> int:
        return sum(self.bands.values())


def band_index(probability: np.ndarray) -> np.ndarray:
    """The master-scale band of each probability as an index into SCORE_BANDS (0: A, the best); a probability on
    a band's upper bound is in that band."""
    uppers = np.array([upper for _, upper in SCORE_BANDS[:-1]])
    return np.searchsorted(uppers, np.asarray(probability, dtype=float), side="left")


def score_band(probability: np.ndarray) -> np.ndarray:
    """The master-scale band (A best .. F worst) of each probability."""
    return np.array([name for name, _ in SCORE_BANDS])[band_index(probability)]


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
        raise LookupError(
            f"{reference} was trained on schema {name} version {version}, but schemas/{name}.yaml is "
            f"version {schema.version}: score with a version trained on it"
        )
    return schema


def _as_written(value) -> str:
    """A cell as the file most likely wrote it (pandas reads 300 as 300.0 in a column with a missing value)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class _Tally:
    """What the whole batch showed, gathered chunk by chunk (counts and a few of the institution's values)."""

    rows: int = 0
    missing: Counter = field(default_factory=Counter)
    unseen: Counter = field(default_factory=Counter)
    unseen_examples: dict[str, list[str]] = field(default_factory=dict)
    rejected: Counter = field(default_factory=Counter)
    bands: Counter = field(default_factory=Counter)


class _RowChecks:
    """The suite's per-row checks of one schema, applied to a chunk: typed columns and each row's failures."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.said = {(c["type"], c["kwargs"].get("column")): c["description"] for c in expected_checks(schema)}
        self.said.update({("whole", name): f"{name} is a whole number" for name in schema.features})

    def apply(self, chunk: pd.DataFrame, tally: _Tally) -> tuple[pd.DataFrame, np.ndarray]:
        """The chunk's schema columns typed as declared, and each row's failed checks ('' for a row to score)."""
        reasons = np.full(len(chunk), "", dtype=object)

        def fail(mask: np.ndarray, check: str, column: str, values: pd.Series | None) -> None:
            rows = np.flatnonzero(mask)
            if not len(rows):
                return
            text = self.said[(check, column)]
            tally.rejected[text] += len(rows)
            got = (
                [" (missing)"] * len(rows)
                if values is None
                else [f" (got {_as_written(v)!r})" for v in values.iloc[rows]]
            )
            reasons[rows] = [
                f"{before}; {text}{g}" if before else f"{text}{g}" for before, g in zip(reasons[rows], got)
            ]

        typed = {}
        for name, feature in self.schema.features.items():
            values = chunk[name]
            present = values.notna().to_numpy()
            if feature.missing is None:
                fail(~present, "expect_column_values_to_not_be_null", name, None)
            else:
                tally.missing[name] += int((~present).sum())
            if feature.type == "categorical" and not feature.coded:
                text = values.where(present, None).astype(object)
                text[present] = values[present].astype(str)
                typed[name] = text
                self._unseen(name, text[present], feature.levels, tally)
                continue
            if feature.type == "boolean":
                words = values.astype(str).str.strip().str.lower()
                unknown = present & ~words.isin(_TRUE | _FALSE).to_numpy()
                fail(unknown, "expect_column_values_to_be_in_set", name, values)
                typed[name] = pd.Series(
                    np.where(present & ~unknown, words.isin(_TRUE).astype(float), np.nan), index=chunk.index
                )
                continue
            numbers = (
                values.astype(float)
                if pd.api.types.is_numeric_dtype(values)
                else pd.to_numeric(values.astype(object), errors="coerce")
            )
            parsed = numbers.notna().to_numpy()
            fail(present & ~parsed, "expect_column_values_to_be_in_type_list", name, values)
            whole = feature.type == "categorical" or feature.dtype == "int"
            if whole:
                number = numbers.fillna(0).to_numpy(dtype=float)
                fractional = parsed & ((np.mod(number, 1) != 0) | (np.abs(number) > _INT64_LIMIT))
                fail(fractional, "whole", name, values)
                numbers = numbers.where(~fractional)
                parsed = parsed & ~fractional
            if feature.type == "categorical":
                self._unseen(name, numbers[parsed].astype("int64").astype(str), feature.levels, tally)
            else:
                if feature.min is not None or feature.max is not None:
                    low = -np.inf if feature.min is None else feature.min
                    high = np.inf if feature.max is None else feature.max
                    outside = parsed & ~numbers.between(low, high).to_numpy()
                    fail(outside, "expect_column_values_to_be_between", name, values)
                if feature.allowed is not None:
                    fail(
                        parsed & ~numbers.isin(feature.allowed).to_numpy(),
                        "expect_column_values_to_be_in_set",
                        name,
                        values,
                    )
            typed[name] = numbers.astype(float)
        identifier = self.schema.id
        if identifier:
            fail(chunk[identifier].isna().to_numpy(), "expect_column_values_to_not_be_null", identifier, None)
        return pd.DataFrame(typed, index=chunk.index), reasons

    @staticmethod
    def _unseen(name: str, text: pd.Series, levels, tally: _Tally) -> None:
        if levels == "open":
            return
        unseen = text[~text.isin(list(map(str, levels)))]
        if len(unseen):
            tally.unseen[name] += len(unseen)
            examples = tally.unseen_examples.setdefault(name, [])
            examples += [v for v in dict.fromkeys(unseen) if v not in examples][: _EXAMPLES - len(examples)]


def _header(path: Path, schema: Schema) -> list[str]:
    """The CSV's header fields, after the checks that need only the header and the file's last line."""

    def fail(reason: str, detail: str | None = None) -> InstitutionDataError:
        # The scoring file is the institution's own, read where it is: what only it may read (`detail`) is shown.
        return InstitutionDataError(f"{path}: {detail or reason}")

    try:
        with open(path, encoding="utf-8", newline="") as file:
            first = file.readline()
    except UnicodeDecodeError as error:
        raise fail(f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not first.strip():
        raise fail("file is empty")
    fields = [name.strip() for name in next(csv.reader([first]))]
    if len(fields) == 1:
        delimiter = next((d for d in _OTHER_DELIMITERS if d in fields[0]), None)
        raise fail(
            f"one column found; the header is separated by {delimiter!r}, expected ','"
            if delimiter
            else f"one column found, the schema declares {len(schema.columns)}: not a comma-separated file with a "
            f"header line naming its columns"
        )
    _repeated_columns(first.encode(), set(schema.columns), fail)
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - _TAIL_BYTES))
        tail = file.read().decode("utf-8", errors="replace")
    last = tail.rstrip("\r\n").rsplit("\n", 1)[-1]
    if size > len(first.encode()):
        cut = cut_last_line(first, last, tail.endswith(("\n", "\r")))
        if cut:
            raise fail(cut)
    return fields


def _chunks(path: Path, schema: Schema, chunk_rows: int) -> tuple[list[str], Iterator[pd.DataFrame]]:
    """The file's column names and its rows, `chunk_rows` at a time (text columns as text)."""
    if path.suffix.lower() in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except (OSError, ValueError) as error:
            raise InstitutionDataError(f"{path}: cannot be read as parquet ({str(error).strip()})") from None
        return parquet.schema_arrow.names, (batch.to_pandas() for batch in parquet.iter_batches(chunk_rows))
    columns = _header(path, schema)
    text = {n for n, f in schema.features.items() if f.type == "categorical" and not f.coded}
    text |= {schema.id} if schema.id else set()
    reader = pd.read_csv(path, chunksize=chunk_rows, encoding="utf-8", dtype={c: str for c in columns if c in text})

    def chunks() -> Iterator[pd.DataFrame]:
        first = True
        try:
            for chunk in reader:
                if first:
                    headerless(chunk, lambda reason: InstitutionDataError(f"{path}: {reason}"))
                    first = False
                yield _unescaped(chunk)
        except UnicodeDecodeError as error:
            raise InstitutionDataError(f"{path}: not UTF-8 text ({error.reason})") from None
        except pd.errors.ParserError as error:
            raise InstitutionDataError(f"{path}: malformed CSV ({str(error).strip()})") from None
        finally:
            reader.close()

    return columns, chunks()


def _batch_warnings(schema: Schema, tally: _Tally, extra: list[str]) -> list[str]:
    """What describes the batch rather than a row: said, never a reason to refuse a row."""
    warnings = []
    for name, count in tally.missing.items():
        limit = schema.features[name].missing.max_rate
        if count / tally.rows > limit:
            missing = f"{name} missing in {count} of {tally.rows} rows ({percent(count / tally.rows)}), more than "
            warnings.append(
                f"{missing}the {percent(limit)} the schema allows (a protected attribute: not a model input)"
                if name in schema.protected_columns
                else f"{missing}the {percent(limit)} its training data allowed; each was filled as the model fills "
                f"a missing value"
            )
    for name, count in tally.unseen.items():
        warnings.append(
            f"{name}: {count} of {tally.rows} rows have a level the model was not trained on, scored as "
            f"'(other)' (e.g. {', '.join(map(repr, tally.unseen_examples[name]))})"
        )
    if extra:
        warnings.append(f"columns not in schema {schema.name}, ignored: {', '.join(extra)}")
    return warnings


def score_file(
    tracking_uri: str,
    name: str,
    alias: str | None,
    version: str | None,
    input_path: Path,
    output_path: Path,
    expectations_dir: Path,
    reasons: int = 0,
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
) -> ScoringResult:
    """Score `input_path` row by row with the registered version and write `output_path` (CSV) whole or not at
    all: one output row per input row, scored or with the checks it failed. With `reasons`, a scorecard's rows
    also get their score points and that many reason codes. `progress` hears the rows done after each chunk."""
    import mlflow

    from riskmodel.scorecard import score_points
    from tracking.versions import resolve_version

    found = resolve_version(tracking_uri, name, alias, version)
    reference = f"{name}/{found.version}"
    schema = model_schema(found.tags, reference)
    require_current_suite(schema, Path(expectations_dir))  # the checks below are the suite's, to the letter
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.exists():
        raise InstitutionDataError(f"{input_path}: file not found")
    if input_path.is_dir():
        raise InstitutionDataError(f"{input_path}: is a directory, expected a CSV or Parquet file")
    columns, chunks = _chunks(input_path, schema, chunk_rows)
    needed = [*([schema.id] if schema.id else []), *schema.features]
    absent = [c for c in needed if c not in columns]
    if absent:
        raise ScoringInputRejected(input_path, schema.suite, [f"column {c} is present: failed" for c in absent])
    extra = [c for c in columns if c not in needed and c != schema.label.column]

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{found.version}")
    inputs = model.metadata.get_input_schema()
    kinds = {spec.name: spec.type.name for spec in inputs.inputs}
    riskmodel = model.unwrap_python_model().model
    if reasons and riskmodel.scaling is None:
        raise LookupError(f"{reference} is not a scorecard (a logistic regression): it has no points or reason codes")
    checks, tally = _RowChecks(schema), _Tally()
    explained = min(reasons, len(riskmodel.layout.features))
    layout = [
        schema.id or "row",
        schema.output,
        "score_band",
        *(["score_points"] if reasons else []),
        *[c for k in range(1, explained + 1) for c in (f"reason_{k}", f"reason_{k}_points")],
        REJECTED_COLUMN,
    ]
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(f".{output_path.name}.partial")
    try:
        with open(partial, "w", newline="", encoding="utf-8") as out:
            for chunk in chunks:
                typed, failed = checks.apply(chunk, tally)
                ok = failed == ""
                scored = pd.DataFrame(
                    {
                        schema.id or "row": chunk[schema.id]
                        if schema.id
                        else np.arange(tally.rows + 1, tally.rows + len(chunk) + 1),
                        schema.output: np.nan,
                        "score_band": "",
                    },
                    index=chunk.index,
                )
                if ok.any():
                    rows = typed.loc[ok, list(kinds)]
                    for column, kind in kinds.items():
                        if kind == "long":
                            rows[column] = rows[column].astype("int64")
                    probability = model.predict(rows)[schema.output].to_numpy(dtype=float)
                    scored.loc[ok, schema.output] = probability
                    scored.loc[ok, "score_band"] = score_band(probability)
                    tally.bands.update(score_band(probability).tolist())
                    if reasons:
                        scored = scored.join(score_points(riskmodel, rows, reasons))
                scored[REJECTED_COLUMN] = failed
                scored = scored.reindex(columns=layout)  # the same columns in every chunk, scored or not
                spreadsheet_safe(scored).to_csv(out, index=False, header=tally.rows == 0)  # opened in spreadsheets
                tally.rows += len(chunk)
                if progress:
                    progress(tally.rows)
        if tally.rows == 0:
            raise InstitutionDataError(f"{input_path}: a header line and no rows: nothing to score")
        os.replace(partial, output_path)
    finally:
        partial.unlink(missing_ok=True)
    return ScoringResult(
        name,
        str(found.version),
        tally.rows,
        str(output_path),
        {band: tally.bands[band] for band, _ in SCORE_BANDS},
        _batch_warnings(schema, tally, extra),
        schema.output,
        dict(tally.rejected.most_common()),
    )
