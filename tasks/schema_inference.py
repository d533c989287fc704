"""Draft a schema from an extract (`fedrisk schema infer`), for a person to review and commit.

It prints aggregates only: types, missing shares, distinct counts, ranges widened from the 1st and
99th percentiles and rounded (never a row's own value), and the names of categorical levels held by
at least `MIN_LEVEL_ROWS` rows. A text column with many distinct values (names, free text) is drafted
with open levels and none of its values shown.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tasks.data import headerless, read_bytes

MIN_LEVEL_ROWS = 10
MAX_LEVELS = 50
MAX_CODES = 12


class SchemaInferenceError(ValueError):
    """The extract cannot be drafted into a schema; the message names the file and column."""


def _nice(value: float, up: bool) -> float:
    """`value` rounded outwards to two significant digits."""
    if value == 0:
        return 0.0
    magnitude = 10 ** (math.floor(math.log10(abs(value))) - 1)
    rounded = (math.ceil if up else math.floor)(value / magnitude) * magnitude
    return float(round(rounded, 10))


def _range(values: pd.Series) -> tuple[float, float]:
    low, high = np.nanpercentile(values, [1, 99])
    span = max(high - low, abs(high), 1.0)
    lower = _nice(low - 0.5 * span, up=False)
    return (0.0 if low >= 0 and lower < 0 else lower), _nice(high + 0.5 * span, up=True)


def _missing(values: pd.Series) -> dict | None:
    rate = float(values.isna().mean())
    return None if rate == 0 else {"max_rate": min(1.0, _nice(2 * rate, up=True))}


def infer_schema(path: Path, label: str | None = None, name: str | None = None, id_column: str | None = None) -> str:
    """A draft schema (YAML text, with comments of aggregates) for the extract at `path`."""
    read_bytes("input", path)
    try:
        frame = pd.read_parquet(path) if Path(path).suffix.lower() in {".parquet", ".pq"} else pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as error:  # pandas' and pyarrow's messages quote no row
        raise SchemaInferenceError(f"{path}: cannot be read ({str(error).strip()})") from None
    if len(frame.columns) < 2:
        raise SchemaInferenceError(f"{path}: one column found: an extract is comma-separated, with a header line "
                                   f"naming a label and at least one feature")
    headerless(frame, lambda reason: SchemaInferenceError(f"{path}: {reason}"))
    label = label or frame.columns[-1]
    if label not in frame.columns:
        raise SchemaInferenceError(f"{path}: no label column {label!r} among its {len(frame.columns)} columns "
                                   f"(pass --label with the name of one)")
    if id_column and id_column not in frame.columns:
        raise SchemaInferenceError(f"{path}: no ID column {id_column!r}")
    counts = frame[label].value_counts()
    if len(counts) != 2:
        raise SchemaInferenceError(f"{path}: label {label!r} has {len(counts)} distinct values; a binary label "
                                   f"has 2")
    positive, negative = counts.index[-1], counts.index[0]  # the rarer value is usually the event
    plain = lambda v: v.item() if hasattr(v, "item") else v  # noqa: E731
    notes, features = [], {}
    for column in frame.columns:
        if column in (label, id_column):
            continue
        values = frame[column]
        distinct = int(values.nunique())
        note = f"{column}: {values.notna().sum()} values, {values.isna().mean():.1%} missing, {distinct} distinct"
        numbers = pd.to_numeric(values, errors="coerce")
        entry: dict
        if numbers.notna().sum() == values.notna().sum() and values.notna().any():
            whole = bool(np.all(np.mod(numbers.dropna(), 1) == 0))
            if whole and distinct <= MAX_CODES and numbers.value_counts().min() >= MIN_LEVEL_ROWS:
                entry = {"type": "numeric", "dtype": "int", "allowed": sorted(int(v) for v in numbers.dropna().unique())}
            else:
                low, high = _range(numbers)
                entry = {"type": "numeric", "dtype": "int" if whole else "float", "min": low, "max": high}
                note += f"; range drafted from the 1st-99th percentiles, widened: {low:g} to {high:g}"
        elif distinct <= MAX_LEVELS and distinct < 0.5 * values.notna().sum():
            level_counts = values.dropna().astype(str).value_counts()
            shown = sorted(level_counts[level_counts >= MIN_LEVEL_ROWS].index)
            hidden = distinct - len(shown)
            entry = {"type": "categorical", "levels": shown}
            if hidden:
                note += (f"; {hidden} level(s) held by fewer than {MIN_LEVEL_ROWS} rows not shown: add the ones that "
                         f"are valid, or use levels: open")
        else:
            entry = {"type": "categorical", "levels": "open"}
            note += "; too many distinct values to list (free text or identifiers?): levels open, none shown"
        missing = _missing(values)
        if missing:
            entry["missing"] = missing
        features[column] = entry
        notes.append(note)
    rate = float(counts[positive] / counts.sum())
    draft = {
        "name": name or Path(path).stem.lower().replace("-", "_").replace(" ", "_"),
        "version": 1,
        "description": "TODO: what one row is, and the unit of amounts",
        **({"id": id_column} if id_column else {}),
        "label": {"column": label, "positive": plain(positive), "negative": plain(negative), "meaning": "default"},
        "output": "default_probability",
        "min_rows": 200,
        "label_rate": [_nice(rate / 3, up=False), min(1.0, _nice(rate * 3, up=True))],
        "features": features,
    }
    header = [f"# Draft schema from {Path(path).name}: {len(frame)} rows, {len(features)} features; review every "
              f"line before committing it as schemas/{draft['name']}.yaml.",
              f"# The label's rarer value was taken as the positive one ({rate:.1%} of rows): check it, and set "
              f"meaning and output.", *[f"# {n}" for n in notes]]
    body = yaml.safe_dump(draft, sort_keys=False, allow_unicode=True, width=120)
    return "\n".join(header) + "\n" + body
