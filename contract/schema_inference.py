"""Draft a schema from one or several institutions' extracts (`fedrisk schema infer`), for a person to review and
commit.

Each file is read into aggregates of its own (a profile: counts, missing rates, minimum and maximum, the 1st and
99th percentiles, level counts); the draft is made from those aggregates alone, so that it accepts every row of
every file it was drafted from: ranges span the observed minimum and maximum with a margin (rounded outwards to
two significant digits, never a row's own value), counts keep an open upper range, integer codes become levels,
every observed level is kept (those held by fewer than `MIN_LEVEL_ROWS` rows are named only in the draft, and fold
into '(other)' in every artifact), missing-value limits tolerate one institution holding them all, and the row
count, label rate, duplicate share and constant features are drafted to what each file has. The notes then count,
per check, the rows of the source it rejects: 0, or the draft is wrong.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from contract.data import headerless, read_bytes
from errors import ExitCode, FedriskError

MIN_LEVEL_ROWS = 10
MAX_LEVELS = 50
MAX_CODES = 12
MISSING_FLOOR = 0.1  # the least missing-value limit drafted: one institution may hold all of the missing values
RANGE_MARGIN = 0.1  # of the observed span, beyond the observed minimum and maximum
ID_NAME = re.compile(r"(^|[_\W])(id|key|no|num|number)$|^id([_\W]|$)", re.IGNORECASE)


class SchemaInferenceError(FedriskError, ValueError):
    """The extract cannot be drafted into a schema; the message names the file and column."""

    exit_code = ExitCode.USAGE


@dataclass
class ColumnProfile:
    """One column of one file, as aggregates."""

    rows: int
    missing: int
    numeric: bool
    whole: bool = False
    low: float = math.nan
    high: float = math.nan
    p01: float = math.nan
    p99: float = math.nan
    zeros: int = 0
    distinct: int = 0
    levels: dict = field(default_factory=dict)  # value -> rows, when at most MAX_LEVELS distinct values


@dataclass
class FileProfile:
    """One file, as aggregates: rows, label counts, duplicate rows and each column's profile."""

    path: Path
    rows: int
    positives: int
    duplicates: int
    columns: dict[str, ColumnProfile]


def _nice(value: float, up: bool) -> float:
    """`value` rounded outwards to two significant digits."""
    if value == 0:
        return 0.0
    magnitude = 10 ** (math.floor(math.log10(abs(value))) - 1)
    rounded = (math.ceil if up else math.floor)(value / magnitude) * magnitude
    return float(round(rounded, 10))


def _read(path: Path) -> pd.DataFrame:
    read_bytes("input", path)
    try:
        frame = pd.read_parquet(path) if Path(path).suffix.lower() in {".parquet", ".pq"} else pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as error:  # pandas' and pyarrow's messages quote no row
        raise SchemaInferenceError(f"{path}: cannot be read ({str(error).strip()})") from None
    if len(frame.columns) < 2:
        raise SchemaInferenceError(
            f"{path}: one column found: an extract is comma-separated, with a header line "
            f"naming a label and at least one feature"
        )
    headerless(frame, lambda reason: SchemaInferenceError(f"{path}: {reason}"))
    return frame


def _column_profile(values: pd.Series) -> ColumnProfile:
    present = values.dropna()
    numbers = pd.to_numeric(present, errors="coerce")
    numeric = bool(len(present)) and bool(numbers.notna().all())
    profile = ColumnProfile(
        rows=len(values), missing=int(values.isna().sum()), numeric=numeric, distinct=int(present.nunique())
    )
    if numeric and len(numbers):
        profile.whole = bool(np.all(np.mod(numbers, 1) == 0))
        profile.low, profile.high = float(numbers.min()), float(numbers.max())
        profile.p01, profile.p99 = (float(v) for v in np.percentile(numbers, [1, 99]))
        profile.zeros = int((numbers == 0).sum())
    if profile.distinct <= MAX_LEVELS:
        counts = (numbers if numeric else present.astype(str)).value_counts()
        profile.levels = {(int(k) if numeric and profile.whole else k): int(v) for k, v in counts.items()}
    return profile


def profile_file(path: Path, label: str | None) -> tuple[FileProfile, str, object, object]:
    """A file's aggregates, and its label column with the positive and negative values (the rarer one is the
    event)."""
    frame = _read(path)
    label = label or frame.columns[-1]
    if label not in frame.columns:
        raise SchemaInferenceError(
            f"{path}: no label column {label!r} among its {len(frame.columns)} columns "
            f"(pass --label with the name of one)"
        )
    counts = frame[label].value_counts()
    if len(counts) != 2:
        raise SchemaInferenceError(f"{path}: label {label!r} has {len(counts)} distinct values; a binary label has 2")
    positive, negative = counts.index[-1], counts.index[0]
    profile = FileProfile(
        Path(path),
        len(frame),
        int(counts[positive]),
        0,
        {c: _column_profile(frame[c]) for c in frame.columns if c != label},
    )
    profile.duplicates = int(frame.drop(columns=[label]).duplicated().sum())
    return profile, label, positive, negative


def _pooled(profiles: list[ColumnProfile]) -> ColumnProfile:
    """One column's aggregates over several files (percentiles: the widest of theirs, for a note only)."""
    levels: dict = {}
    complete = all(p.levels or p.rows == p.missing for p in profiles)
    for p in profiles:
        for level, rows in p.levels.items():
            levels[level] = levels.get(level, 0) + rows
    present = [p for p in profiles if p.rows > p.missing]
    return ColumnProfile(
        rows=sum(p.rows for p in profiles),
        missing=sum(p.missing for p in profiles),
        numeric=all(p.numeric for p in present) and bool(present),
        whole=all(p.whole for p in present),
        low=min((p.low for p in present), default=math.nan),
        high=max((p.high for p in present), default=math.nan),
        p01=min((p.p01 for p in present), default=math.nan),
        p99=max((p.p99 for p in present), default=math.nan),
        zeros=sum(p.zeros for p in profiles),
        distinct=len(levels)
        if complete and len(levels) <= MAX_LEVELS
        else max(MAX_LEVELS + 1, *(p.distinct for p in profiles)),
        levels=levels if complete and len(levels) <= MAX_LEVELS else {},
    )


def _range(column: ColumnProfile) -> tuple[float, float]:
    """The observed minimum and maximum, each widened by a tenth of the span and rounded outwards; no lower bound
    below 0 for a column that has no negative value."""
    span = max(column.high - column.low, abs(column.high), 1.0)
    low, high = _nice(column.low - RANGE_MARGIN * span, up=False), _nice(column.high + RANGE_MARGIN * span, up=True)
    return (0.0 if column.low >= 0 > low else low), high


def _is_id(name: str, column: ColumnProfile) -> bool:
    """Unique in every row, and an identifier by its form: text, or whole numbers named like an ID or numbering
    the rows (an amount in whole units may be unique too)."""
    if column.missing or column.rows < 2 or column.levels:
        return False
    unique = column.distinct >= column.rows
    if not unique:
        return False
    if not column.numeric:
        return True
    return column.whole and (bool(ID_NAME.search(name)) or column.high - column.low + 1 <= 2 * column.rows)


def _feature(name: str, column: ColumnProfile, file_rates: list[float]) -> tuple[dict, str]:
    """A feature's draft and its note (aggregates and level counts only)."""
    note = (
        f"{name}: {column.rows - column.missing} values, {column.missing / column.rows:.1%} missing, "
        f"{'more than ' + str(MAX_LEVELS) if column.distinct > MAX_LEVELS else column.distinct} distinct"
    )
    entry: dict
    mostly_zero = column.zeros * 2 >= column.rows - column.missing or (
        bool(column.levels) and max(column.levels, key=lambda level: column.levels[level]) == 0
    )
    if column.numeric and column.whole and column.low == 0 and column.distinct > 2 and mostly_zero:
        entry = {"type": "numeric", "dtype": "int", "min": 0}
        note += f"; a count (most rows 0): no upper limit (99th percentile {column.p99:g})"
    elif column.numeric and column.whole and column.levels and len(column.levels) <= MAX_CODES:
        entry = {"type": "categorical", "levels": sorted(column.levels)}
        note += f"; integer codes: {len(column.levels)} levels"
    elif column.numeric:
        low, high = _range(column)
        entry = {"type": "numeric", "dtype": "int" if column.whole else "float", "min": low, "max": high}
        note += (
            f"; range: the observed minimum and maximum widened by {RANGE_MARGIN:.0%} of the span, {low:g} to "
            f"{high:g} (1st-99th percentiles {_nice(column.p01, up=False):g} to {_nice(column.p99, up=True):g})"
        )
    elif column.levels and len(column.levels) < 0.5 * (column.rows - column.missing):
        entry = {"type": "categorical", "levels": sorted(column.levels)}
        rare = sum(1 for rows in column.levels.values() if rows < MIN_LEVEL_ROWS)
        if rare:
            note += (
                f"; {rare} level(s) held by fewer than {MIN_LEVEL_ROWS} rows: kept here (remove any that is "
                f"not valid), folded into '(other)' in every artifact (rare_level_min_rows)"
            )
    else:
        entry = {"type": "categorical", "levels": "open"}
        note += "; too many distinct values to list (free text or identifiers?): levels open, none shown"
    if column.missing:
        rate = min(1.0, max(_nice(2 * max(file_rates), up=True), MISSING_FLOOR))
        entry["missing"] = {"max_rate": rate}
        note += f"; missing up to {rate:g} (twice the highest file's rate, at least {MISSING_FLOOR:g})"
    return entry, note


def _label_names(label: str) -> tuple[str, str]:
    """The label's meaning and the scoring output's name, from the label column's own name."""
    words = re.sub(r"[^a-z]+", " ", label.lower()).strip()
    meaning = (words[:31].rsplit(" ", 1)[0] if len(words) > 31 else words) or "event"
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    slug = slug if slug[:1].isalpha() else f"event_{slug}".rstrip("_")
    return meaning, f"{slug[:50]}_probability"


def rejected_rows(path: Path, draft: dict) -> dict[str, int]:
    """How many rows of the file at `path` each drafted feature check rejects (must be 0 for a source file)."""
    frame = _read(path)
    rejected: dict[str, int] = {}
    for name, entry in draft["features"].items():
        values = frame[name]
        bad = values.isna() & ("missing" not in entry)
        if entry["type"] == "numeric":
            numbers = pd.to_numeric(values, errors="coerce")
            bad |= values.notna() & numbers.isna()
            if "min" in entry:
                bad |= numbers < entry["min"]
            if "max" in entry:
                bad |= numbers > entry["max"]
        elif entry["levels"] != "open":
            kept = {str(level) for level in entry["levels"]}
            shown = values.dropna().map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
            bad |= values.notna() & ~shown.reindex(values.index).isin(kept)
        rejected[name] = int(bad.sum())
    return rejected


def infer_schema(
    paths: Path | list[Path], label: str | None = None, name: str | None = None, id_column: str | None = None
) -> str:
    """A draft schema (YAML text, with comments of aggregates) that accepts every row of every file in `paths`
    (one institution's extract, or several institutions' of the same layout)."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    found = [profile_file(path, label) for path in paths]
    profiles = [profile for profile, *_ in found]
    label, positive, negative = found[0][1], found[0][2], found[0][3]
    columns = list(profiles[0].columns)
    for profile, other_label, *_ in found[1:]:
        if other_label != label or list(profile.columns) != columns:
            raise SchemaInferenceError(
                f"{profile.path}: its columns differ from {paths[0]}'s (one schema drafts files of one layout)"
            )
    if id_column and id_column not in columns:
        raise SchemaInferenceError(f"{paths[0]}: no ID column {id_column!r}")
    pooled = {c: _pooled([p.columns[c] for p in profiles]) for c in columns}
    notes, features = [], {}
    if id_column is None:
        id_column = next((c for c in columns if _is_id(c, pooled[c])), None)
        if id_column:
            notes.append(f"{id_column}: unique in every row: drafted as the ID (pass --id to choose another)")
    constant = []
    for column in columns:
        if column == id_column:
            continue
        rates = [p.columns[column].missing / p.rows for p in profiles]
        features[column], note = _feature(column, pooled[column], rates)
        if any(p.columns[column].distinct <= 1 for p in profiles):
            constant.append(column)
        notes.append(note)
    rows = [p.rows for p in profiles]
    rates = [p.positives / p.rows for p in profiles]
    duplicate_share = max(p.duplicates / p.rows for p in profiles)
    meaning, output = _label_names(str(label))

    def plain(value: object) -> object:
        return value.item() if hasattr(value, "item") else value

    draft = {
        "name": name or paths[0].stem.lower().replace("-", "_").replace(" ", "_"),
        "version": 1,
        "description": "TODO: what one row is, and the unit of amounts",
        **({"id": id_column} if id_column else {}),
        "label": {"column": label, "positive": plain(positive), "negative": plain(negative), "meaning": meaning},
        "output": output,
        "min_rows": min(200, min(rows)),
        "label_rate": [_nice(min(rates) / 2, up=False), min(1.0, _nice(max(rates) * 2, up=True))],
        "max_duplicate_share": max(0.01, min(1.0, _nice(2 * duplicate_share, up=True))),
        **({"constant_features": "warning"} if constant else {}),
        "features": features,
    }
    rejected = {c: 0 for c in features}
    for path in paths:
        for column, count in rejected_rows(path, draft).items():
            rejected[column] += count
    sources = ", ".join(f"{p.path.name} ({p.rows} rows)" for p in profiles)
    header = [
        f"# Draft schema from {sources}: {len(features)} features; review every line before committing it as "
        f"schemas/{draft['name']}.yaml.",
        f"# The label's rarer value was taken as the positive one "
        f"({sum(p.positives for p in profiles) / sum(rows):.1%} "
        f"of rows): check it, and the meaning and output drafted from the label's name.",
        f"# Rows of the source each feature's checks reject: {sum(rejected.values())} "
        f"({', '.join(f'{c} {n}' for c, n in rejected.items() if n) or 'none by any check'}).",
        *([f"# Constant in at least one file (a warning, not a refusal): {', '.join(constant)}"] if constant else []),
        *[f"# {n}" for n in notes],
    ]
    body = yaml.safe_dump(draft, sort_keys=False, allow_unicode=True, width=120)
    return "\n".join(header) + "\n" + body
