"""Data stage: read one institution's extract as its schema declares it, and split it.

Every function here runs where one institution's rows are and returns rows only to its caller on
that machine. An extract is read, checked and digested once per run; every later read verifies the
digest, so a file replaced after validation stops the run instead of training on unvalidated rows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from contract.schema import Schema
from errors import ExitCode, FedriskError

_EXAMPLES = 3
_OTHER_DELIMITERS = [";", "\t", "|"]
_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"0", "false", "f", "no", "n"}


class InstitutionDataError(FedriskError, ValueError):
    """An institution's extract cannot be read. The message names the institution and file and says what is wrong
    in counts and declared names only (it may leave the institution); `detail` adds example values, for the
    institution's own log."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail or message


@dataclass(frozen=True)
class Extract:
    """One institution's extract as a run uses it: where it is, how its columns map to the schema's
    (name in its file -> schema name), and the digest validation saw (None before validation)."""

    institution: str
    path: Path
    columns: dict[str, str] = field(default_factory=dict)
    digest: str | None = None

    def validated(self, digest: str) -> Extract:
        return Extract(self.institution, self.path, self.columns, digest)


@dataclass(frozen=True)
class Split:
    """How every institution splits its rows: a stratified holdout for evaluation, and the rest into
    fit and validation (federated validation, early stopping). Seeded per institution."""

    holdout_fraction: float
    validation_fraction: float
    seed: int


# A cell a spreadsheet runs as a formula when it begins with one of these (OWASP, CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` for a CSV a person may open in a spreadsheet: a text cell that begins like a formula gets a leading
    single quote, so that it is shown, never run (OWASP's rule for CSV injection). Numbers are left as they are."""
    escaped = frame.copy()
    for column in frame.columns[frame.dtypes == object]:  # noqa: E721  (a column-wise comparison)
        values = frame[column]
        text = values.map(lambda v: isinstance(v, str) and v.startswith(FORMULA_PREFIXES))
        if text.any():
            escaped[column] = values.where(~text, "'" + values.astype(str))
    return escaped


def file_digest(data: bytes) -> str:
    """sha256 of an extract's bytes: what lineage records and later reads verify."""
    return hashlib.sha256(data).hexdigest()


def _structure_problems(data: bytes) -> list[str]:
    """What is wrong with a CSV's structure, said plainly: a header repeated inside the data, a cut last line."""
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    if not lines:
        return []
    header = lines[0].strip()
    problems = [
        f"header repeated at line {number}" for number, line in enumerate(lines[1:], start=2) if line.strip() == header
    ]
    if len(lines) > 1:
        cut = cut_last_line(lines[0], lines[-1], text.endswith(("\n", "\r")), f"line {len(lines)}")
        problems += [cut] if cut else []
    return problems


def cut_last_line(header: str, last: str, ends_with_newline: bool, where: str = "it") -> str | None:
    """The problem of a CSV whose last line (`where`: "line N") has fewer fields than its header and no line end: the
    file was cut mid-line (a transfer or a disk filled up)."""
    if ends_with_newline:
        return None
    expected = len(next(csv.reader([header])))
    found = len(next(csv.reader([last]), []))
    if found >= expected:
        return None
    return f"last line incomplete ({where} has {found} of {expected} fields; the file ends mid-line)"


def _parse(data: bytes, suffix: str, text: Iterable[str] = ()) -> pd.DataFrame:
    """A CSV or Parquet file's frame; a CSV's `text` columns read as the text in the file (see `_text_columns`)."""
    if suffix in {".parquet", ".pq"}:
        return pd.read_parquet(io.BytesIO(data))
    return _unescaped(pd.read_csv(io.BytesIO(data), dtype=dict.fromkeys(text, str)))


def _text_columns(schema: Schema, columns: dict[str, str]) -> list[str]:
    """The file's names of the schema's text levels (categorical, not coded): read as text, so that a level is what
    the file says ("02134", "1") whether or not its column has a missing value or is read a chunk at a time
    (parsed as numbers, "1" became "1.0" wherever the column had a gap, and a leading zero was lost)."""
    in_file = {schema_name: file_name for file_name, schema_name in columns.items()}
    return [
        in_file.get(name, name)
        for name, feature in schema.features.items()
        if feature.type == "categorical" and not feature.coded
    ]


def _unescaped(frame: pd.DataFrame) -> pd.DataFrame:
    """What `spreadsheet_safe` escaped, as it was: a CSV fedrisk (or a spreadsheet's safe export) wrote reads back
    with its values unchanged."""
    for column in frame.columns[frame.dtypes == object]:  # noqa: E721  (a column-wise comparison)
        values = frame[column]
        quoted = values.map(lambda v: isinstance(v, str) and v.startswith("'") and v[1:].startswith(FORMULA_PREFIXES))
        if quoted.any():
            frame[column] = values.where(~quoted, values.astype(str).str[1:])
    return frame


def _examples(values: pd.Series) -> str:
    return ", ".join(repr(v) for v in list(dict.fromkeys(values.astype(str)))[:_EXAMPLES])


_INT64_LIMIT = float(2**63 - 1024)  # the largest float that casts to int64 without wrapping


def _coerce(frame: pd.DataFrame, schema: Schema) -> list[tuple[str, str]]:
    """Give the schema's columns their declared types in place; return what could not be, by column: what is
    wrong (counts and names) and a few of the offending values (for the institution only).

    Numbers stay as they are (a float is not cast to int); whole-number columns without missing
    values become int64; text levels stay text; booleans and the label become 0/1.
    """
    problems = []
    for name, feature in schema.features.items():
        if name not in frame.columns:
            continue
        values = frame[name]
        present = values.notna()
        if feature.type == "categorical" and not feature.coded:
            frame[name] = values.where(~present, values.astype(str))
            continue
        if feature.type == "boolean":
            text = values.astype(str).str.strip().str.lower()
            unknown = present & ~text.isin(_TRUE | _FALSE)
            if unknown.any():
                problems.append(
                    (
                        f"column {name} has {int(unknown.sum())} values that are not true/false",
                        f"e.g. {_examples(values[unknown])}",
                    )
                )
                continue
            frame[name] = np.where(present, text.isin(_TRUE).astype(float), np.nan)
            if present.all():
                frame[name] = frame[name].astype("int64")
            continue
        numbers = pd.to_numeric(values, errors="coerce") if values.dtype == object else values
        bad = numbers.isna() & present
        if bad.any():
            problems.append(
                (f"column {name} has {int(bad.sum())} non-numeric values", f"e.g. {_examples(values[bad])}")
            )
            continue
        whole = feature.type == "categorical" or feature.dtype == "int"
        if whole:
            fractional = numbers.notna() & (np.mod(numbers.fillna(0).astype(float), 1) != 0)
            if fractional.any():
                problems.append(
                    (
                        f"column {name} has {int(fractional.sum())} non-integer values",
                        f"e.g. {_examples(values[fractional])}",
                    )
                )
                continue
            huge = numbers.notna() & (numbers.abs() > _INT64_LIMIT)
            if huge.any():  # an int64 cast would wrap 1e308 round to -9223372036854775808
                problems.append(
                    (
                        f"column {name} has {int(huge.sum())} values too large for a whole number "
                        f"(beyond +/-{_INT64_LIMIT:.1e})",
                        f"e.g. {_examples(values[huge])}",
                    )
                )
                continue
            if numbers.notna().all():
                numbers = numbers.astype("int64")
        frame[name] = numbers
    label = schema.label
    if label.column in frame.columns:
        values = frame[label.column]
        text = values.astype(str)
        positive, negative = text == str(label.positive), text == str(label.negative)
        unknown = values.notna() & ~positive & ~negative
        if unknown.any():
            problems.append(
                (
                    f"column {label.column} has {int(unknown.sum())} values other than "
                    f"{label.positive!r} ({label.meaning}) and {label.negative!r}",
                    f"e.g. {_examples(values[unknown])}",
                )
            )
        else:
            mapped = np.where(positive, 1.0, np.where(negative, 0.0, np.nan))
            frame[label.column] = mapped.astype("int64") if values.notna().all() else mapped
    return problems


def read_bytes(institution: str, path: Path, expected_digest: str | None = None) -> tuple[bytes, str]:
    """The extract's bytes and digest; InstitutionDataError if unreadable or not the validated file."""
    path = Path(path)

    def fail(reason: str) -> InstitutionDataError:
        return InstitutionDataError(f"{_whose(institution)}{path}: {reason}")

    if not path.exists():
        raise fail("file not found")
    if path.is_dir():
        raise fail("is a directory, expected a CSV or Parquet file")
    try:
        data = path.read_bytes()
    except PermissionError:
        raise fail("permission denied") from None
    except OSError as error:
        raise fail(f"cannot be read ({error.strerror})") from None
    digest = file_digest(data)
    if expected_digest is not None and digest != expected_digest:
        raise fail(_changed(expected_digest, digest))
    return data, digest


def _changed(validated: str, now: str) -> str:
    return (
        f"the file changed after it was validated (sha256 {validated[:16]} when validated, {now[:16]} now); "
        f"nothing was trained on it. Run the retraining again to validate the new file"
    )


def _whose(institution: str | None) -> str:
    """How an error names the file's owner: the institution, or nobody for a file of one's own (scoring input)."""
    return f"institution '{institution}': " if institution else ""


def _frame(institution: str | None, path: Path, data: bytes, columns: dict[str, str], schema: Schema) -> pd.DataFrame:
    """The extract's bytes parsed, renamed to the schema's columns and typed as it declares."""

    def fail(reason: str, detail: str | None = None) -> InstitutionDataError:
        where = f"{_whose(institution)}{path}: "
        return InstitutionDataError(where + reason, where + detail if detail else None)

    suffix = path.suffix.lower()
    if suffix not in {".parquet", ".pq"}:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise fail(f"not UTF-8 text ({error.reason} at byte {error.start})") from None
        structure = _structure_problems(data)
        if structure:
            raise fail("; ".join(structure))
    try:
        frame = _parse(data, suffix, _text_columns(schema, columns))
    except pd.errors.EmptyDataError:
        raise fail("file is empty") from None
    except pd.errors.ParserError as error:
        raise fail(f"malformed CSV ({str(error).strip()})") from None
    except (OSError, ValueError) as error:  # pyarrow's errors for a corrupt Parquet file
        raise fail(f"cannot be read as {suffix.lstrip('.') or 'CSV'} ({str(error).strip()})") from None
    if len(frame.columns) == 1:
        delimiter = next((d for d in _OTHER_DELIMITERS if d in str(frame.columns[0])), None)
        if delimiter is not None:
            raise fail(f"one column found; the header is separated by {delimiter!r}, expected ','")
        raise fail(
            f"one column found, the schema declares {len(schema.columns)}: not a comma-separated extract "
            f"with a header line naming its columns"
        )
    if frame.empty and len(frame.columns) > 1:
        raise fail("a header line and no rows: nothing to check or train on")
    if suffix not in {".parquet", ".pq"}:
        headerless(frame, fail)  # before the names are read as names
        _repeated_columns(data, set(schema.columns) | set(columns or {}), fail)
    if columns:
        missing = sorted(set(columns) - set(frame.columns))
        if missing:
            raise fail(f"column mapping names columns not in the file: {', '.join(missing)}")
        frame = frame.rename(columns=columns)
    problems = _coerce(frame, schema)
    if problems:
        raise fail(
            "; ".join(shared for shared, _ in problems),
            "; ".join(f"{shared}, {examples}" for shared, examples in problems),
        )
    return frame


def _repeated_columns(data: bytes, declared: set[str], fail: Callable[[str, str], Exception]) -> None:
    """Raise `fail` when the header names a column twice (pandas would keep both, the second as `AGE.1`, a column
    not in the file). A declared name is said; an undeclared one only in the institution's own detail."""
    first = data.decode("utf-8", errors="replace").splitlines()[:1]
    header = [name.strip() for name in next(csv.reader(first), [])] if first else []
    repeated = {
        name: [i + 1 for i, h in enumerate(header) if h == name] for name in set(header) if header.count(name) > 1
    }
    if not repeated:
        return

    def said(names: Iterable[str]) -> str:
        return "; ".join(
            f"column {name} appears {len(repeated[name])} times in the header (fields "
            f"{', '.join(map(str, repeated[name]))})"
            for name in sorted(names)
        )

    shared = [n for n in repeated if n in declared]
    undeclared = len(repeated) - len(shared)
    reason = "; ".join(
        part
        for part in (
            said(shared),
            f"{undeclared} undeclared column name(s) appear more than "
            f"once in the header (named in the institution's log)"
            if undeclared
            else "",
        )
        if part
    )
    raise fail(reason + ": each column must be named once", said(repeated) + ": each column must be named once")


def headerless(frame: pd.DataFrame, fail: Callable[[str], Exception]) -> None:
    """Raise `fail(reason)` when a CSV's first line is a row rather than a header: most of its fields are numbers
    or values that recur in their column (a header names columns). The reason counts; it quotes nothing."""

    def number(text: str) -> bool:
        try:
            float(text)
        except ValueError:
            return False
        return True

    def like_data(name: object, column: pd.Series) -> bool:
        text = str(name)  # pandas renames a repeated field x to x.1: a repeated number is still one
        return number(text) or number(text.rsplit(".", 1)[0]) or text in set(column.head(1000).astype(str))

    rowlike = sum(like_data(name, frame[name]) for name in frame.columns)
    if len(frame.columns) > 1 and rowlike * 2 > len(frame.columns):
        raise fail(
            f"the first line looks like a row, not a header ({rowlike} of {len(frame.columns)} fields are "
            f"numbers or values of their column): the file must start with a line naming its columns"
        )


_parsed: OrderedDict[tuple, pd.DataFrame] = OrderedDict()
_parsed_lock = threading.Lock()
_PARSED_KEPT = 8


def read_extract(extract: Extract, schema: Schema) -> tuple[pd.DataFrame, str]:
    """An institution's extract (CSV or Parquet) with its columns renamed to the schema's and typed as it
    declares, and the file's digest. The digest is verified when the extract has one (validated).

    The bytes are read (and digested) every time; they are parsed once per process and digest.
    """
    data, digest = read_bytes(extract.institution, extract.path, extract.digest)
    key = (str(extract.path), digest, tuple(sorted(extract.columns.items())), schema.name, schema.version)
    with _parsed_lock:
        frame = _parsed.get(key)
        if frame is not None:
            _parsed.move_to_end(key)
    if frame is None:
        frame = _frame(extract.institution, Path(extract.path), data, extract.columns, schema)
        with _parsed_lock:
            _parsed[key] = frame
            while len(_parsed) > _PARSED_KEPT:
                _parsed.popitem(last=False)
    return frame.copy(), digest


def read_institution(
    institution: str | None, path: Path, schema: Schema, columns: dict[str, str] | None = None
) -> pd.DataFrame:
    """`read_extract` for a file outside a run (a one-off check; None: the caller's own file, as scoring input)."""
    return read_extract(Extract(institution or "", Path(path), dict(columns or {})), schema)[0]  # "": named by nobody


def institution_seed(seed: int, institution: str) -> int:
    """A per-institution seed, stable across processes (unlike `hash`)."""
    return (seed * 1_000_003 + zlib.crc32(institution.encode())) % (2**32)


def split_holdout(
    frame: pd.DataFrame, label: str, *, fraction: float, seed: int, institution: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split an institution's rows into (train, holdout), stratified on the label."""
    train, holdout = train_test_split(
        frame,
        test_size=fraction,
        stratify=frame[label],
        random_state=institution_seed(seed, institution),
    )
    return train, holdout


STREAM_ABOVE_BYTES = 256 * 2**20  # an extract larger than this is read in chunks by the stages that can
CHUNK_ROWS = 250_000  # rows a chunk: about 60 MB of a 25-column frame


def streamed(extract: Extract) -> bool:
    """Whether a stage reads this extract in chunks (a file over STREAM_ABOVE_BYTES) instead of whole."""
    try:
        return Path(extract.path).stat().st_size > STREAM_ABOVE_BYTES
    except OSError:  # the whole read says what is wrong with it
        return False


class _Digesting(io.RawIOBase):
    """A file read through: the sha256 of every byte read so far."""

    def __init__(self, handle: io.BufferedReader) -> None:
        self.handle, self.sha256 = handle, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.handle.readinto(buffer)
        if n:
            self.sha256.update(memoryview(buffer)[:n])
        return n

    def finish(self) -> str:
        """The digest of the whole file: what was not read yet is read (and digested) to the end."""
        while self.read(2**20):
            pass
        return self.sha256.hexdigest()


def read_chunks(
    extract: Extract, schema: Schema, columns: list[str], rows: int | None = None
) -> Iterator[pd.DataFrame]:
    """The validated extract's schema `columns`, `rows` (CHUNK_ROWS) rows at a time in file order, renamed and typed as
    `read_extract` does, in memory bounded by a chunk. A CSV is parsed in one pass over its bytes whose digest is
    checked when the last chunk is done (the bytes parsed are the bytes validated: a consumer returns nothing
    before the iterator ends); a Parquet file's compressed bytes are read and checked first."""
    path, name, rows = Path(extract.path), extract.institution, rows or CHUNK_ROWS
    where = f"{_whose(name)}{path}: "
    in_file = {schema_name: file_name for file_name, schema_name in extract.columns.items()}
    wanted = [in_file.get(column, column) for column in columns]
    renamed = {file_name: column for column, file_name in zip(columns, wanted, strict=True) if file_name != column}

    def typed(chunk: pd.DataFrame) -> pd.DataFrame:
        chunk = _unescaped(chunk).rename(columns=renamed)
        problems = _coerce(chunk, schema)
        if problems:
            raise InstitutionDataError(
                where + "; ".join(shared for shared, _ in problems),
                where + "; ".join(f"{shared}, {examples}" for shared, examples in problems),
            )
        return chunk

    if path.suffix.lower() in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        data, _ = read_bytes(name, path, extract.digest)
        for batch in pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=rows, columns=wanted):
            yield typed(batch.to_pandas())
        return
    try:
        handle = path.open("rb")
    except OSError as error:
        raise InstitutionDataError(f"{where}cannot be read ({error.strerror})") from None
    with handle:
        reader = _Digesting(handle)
        try:
            text = dict.fromkeys(set(_text_columns(schema, extract.columns)) & set(wanted), str)
            for chunk in pd.read_csv(reader, chunksize=rows, usecols=wanted, dtype=text):
                yield typed(chunk)
        except InstitutionDataError:
            raise
        except (pd.errors.ParserError, ValueError) as error:  # a columns or tokenizing error: no value quoted
            raise InstitutionDataError(f"{where}malformed CSV ({str(error).strip()})") from None
        digest = reader.finish()
    if extract.digest is not None and digest != extract.digest:
        raise InstitutionDataError(where + _changed(extract.digest, digest))


def part_rows(extract: Extract, schema: Schema, split: Split) -> dict[str, np.ndarray]:
    """Each part's rows (train, holdout, fit, validation) as positions in the file, in the order `load_parts` gives
    them: the same seeded, stratified draws, from a read of the label column alone."""
    label = schema.label.column
    values = np.concatenate([chunk[label].to_numpy() for chunk in read_chunks(extract, schema, [label])])
    train, holdout = train_test_split(
        np.arange(len(values)),
        test_size=split.holdout_fraction,
        stratify=values,
        random_state=institution_seed(split.seed, extract.institution),
    )
    fit, validation = train_test_split(
        np.arange(len(train)),
        test_size=split.validation_fraction,
        stratify=values[train],
        random_state=institution_seed(split.seed + 1, extract.institution),
    )
    return {"train": train, "holdout": holdout, "fit": train[fit], "validation": train[validation]}


def read_parts(
    extract: Extract,
    schema: Schema,
    split: Split,
    parts: tuple[str, ...],
    columns: list[str],
    encode: Callable[[pd.DataFrame], np.ndarray],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`load_parts` of a large extract, encoded: each part's rows as `encode` makes them (float32, the precision
    the engines train in) and their 0/1 labels, in `load_parts`' order, filled a chunk at a time: memory holds the
    encoded parts and one chunk, never the whole frame."""
    order = part_rows(extract, schema, split)
    rows = sum(len(order[p]) for p in ("train", "holdout"))
    slots = {}
    for part in parts:
        slots[part] = np.full(rows, -1, dtype=np.int64)
        slots[part][order[part]] = np.arange(len(order[part]))
    x: dict[str, np.ndarray] = {}
    y = {part: np.empty(len(order[part]), dtype=np.float64) for part in parts}
    start = 0
    for chunk in read_chunks(extract, schema, list(dict.fromkeys([*columns, schema.label.column]))):
        for part in parts:
            to = slots[part][start : start + len(chunk)]
            chosen = to >= 0
            block = encode(chunk[chosen])
            if part not in x:
                x[part] = np.empty((len(order[part]), block.shape[1]), dtype=np.float32)
            x[part][to[chosen]] = block
            y[part][to[chosen]] = labels(chunk[chosen], schema)
        start += len(chunk)
    return {part: (x[part], y[part]) for part in parts}


PARTS = ("train", "holdout", "fit", "validation")


def load_parts(extract: Extract, schema: Schema, split: Split, parts: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """The `parts` rows of an institution's extract, as read (schema columns), from one read.

    train and holdout split the extract; fit and validation split train again (stratified, by
    `validation_fraction`): models learn on fit and early-stop on validation.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part {unknown[0]!r}; one of {PARTS}")
    frame, _ = read_extract(extract, schema)
    label, name = schema.label.column, extract.institution
    train, holdout = split_holdout(frame, label, fraction=split.holdout_fraction, seed=split.seed, institution=name)
    found = {"train": train, "holdout": holdout}
    if {"fit", "validation"} & set(parts):
        found["fit"], found["validation"] = split_holdout(
            train, label, fraction=split.validation_fraction, seed=split.seed + 1, institution=name
        )
    return {p: found[p] for p in parts}


def load_part(extract: Extract, schema: Schema, split: Split, part: str) -> pd.DataFrame:
    """One part (see `load_parts`) of an institution's extract."""
    return load_parts(extract, schema, split, (part,))[part]


def fit_rows(train_rows: int, validation_fraction: float) -> int:
    """How many rows of a training split models fit on (the rest validates), as `load_parts` splits it:
    scikit-learn rounds the validation share up."""
    return train_rows - math.ceil(validation_fraction * train_rows)


def labels(rows: pd.DataFrame, schema: Schema) -> np.ndarray:
    """The label as 0/1 floats."""
    return rows[schema.label.column].to_numpy(dtype=np.float64)
