"""Data stage: read one institution's extract, split it, and compute its local statistics.

Every function here runs where one institution's rows are and returns rows only to its
caller on that machine; what leaves the institution is counts, sums and digests.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from sklearn.model_selection import train_test_split

from tasks.schema import COLUMNS


_EXAMPLES = 3
_OTHER_DELIMITERS = [";", "\t", "|"]


class InstitutionDataError(ValueError):
    """An institution's extract cannot be read; the message names the institution and file."""


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix.lower() in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    return pd.read_csv(path)


def read_institution(institution: str, path: Path, columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Read an institution's CSV or Parquet extract, rename its columns to the schema
    (`columns`: name in the file -> schema name) and make the schema's columns numeric.
    """
    path = Path(path)

    def fail(reason: str) -> InstitutionDataError:
        return InstitutionDataError(f"institution '{institution}': {path}: {reason}")

    if not path.exists():
        raise fail("file not found")
    if path.is_dir():
        raise fail("is a directory, expected a CSV or Parquet file")
    try:
        frame = _read_table(path)
    except pd.errors.EmptyDataError:
        raise fail("file is empty") from None
    except PermissionError:
        raise fail("permission denied") from None
    except UnicodeDecodeError as error:
        raise fail(f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except pd.errors.ParserError as error:
        raise fail(f"malformed CSV ({str(error).strip()})") from None
    except (OSError, ValueError) as error:  # pyarrow's errors for a corrupt Parquet file
        raise fail(f"cannot be read as {path.suffix.lstrip('.') or 'CSV'} ({str(error).strip()})") from None
    if len(frame.columns) == 1:
        delimiter = next((d for d in _OTHER_DELIMITERS if d in str(frame.columns[0])), None)
        if delimiter is not None:
            raise fail(f"one column found; the header is separated by {delimiter!r}, expected ','")
    if columns:
        missing = sorted(set(columns) - set(frame.columns))
        if missing:
            raise fail(f"column mapping names columns not in the file: {', '.join(missing)}")
        frame = frame.rename(columns=columns)
    problems = []
    for column in [c for c in COLUMNS if c in frame.columns and frame[c].dtype == object]:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = frame[column][numbers.isna() & frame[column].notna()]
        if len(bad):
            examples = ", ".join(repr(v) for v in list(dict.fromkeys(bad.astype(str)))[:_EXAMPLES])
            problems.append(f"column {column} has {len(bad)} non-numeric values, e.g. {examples}")
        else:
            frame[column] = numbers
    if problems:
        raise fail("; ".join(problems))
    return frame


def frame_digest(frame: pd.DataFrame) -> str:
    """A content digest of an extract (columns and values), for lineage and change detection."""
    hasher = hashlib.sha256()
    hasher.update("\x1f".join(map(str, frame.columns)).encode())
    hasher.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return hasher.hexdigest()[:16]


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


@dataclass(frozen=True)
class LocalStatistics:
    """What an institution shares: row and positive counts, per-feature sum and sum of squares."""

    institution: str
    count: int
    sum: list[float]
    sum_of_squares: list[float]
    positives: int


def local_statistics(institution: str, x: np.ndarray, y: np.ndarray) -> LocalStatistics:
    """Count, positives, and sum and sum of squares of each feature column, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return LocalStatistics(
        institution=institution,
        count=int(x.shape[0]),
        sum=x.sum(axis=0).tolist(),
        sum_of_squares=np.square(x).sum(axis=0).tolist(),
        positives=int(np.sum(np.asarray(y) == 1)),
    )


def combine_statistics(statistics: list[LocalStatistics]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean and (population) standard deviation from the institutions' aggregates.

    A constant feature gets std 1 so that standardizing it cannot divide by zero.
    """
    count = sum(s.count for s in statistics)
    if count == 0:
        raise ValueError("no rows to standardize: every institution reported zero rows")
    total = np.sum([s.sum for s in statistics], axis=0)
    total_squares = np.sum([s.sum_of_squares for s in statistics], axis=0)
    mean = total / count
    variance = np.maximum(total_squares / count - np.square(mean), 0.0)
    std = np.sqrt(variance)
    std[std <= 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0
    return mean, std


def balanced_positive_weight(statistics: list[LocalStatistics]) -> float:
    """Negatives per positive over all institutions: the loss weight that balances the classes."""
    count = sum(s.count for s in statistics)
    positives = sum(s.positives for s in statistics)
    if positives == 0 or positives == count:
        raise ValueError("a balanced positive-class weight needs both classes in the training data")
    return (count - positives) / positives


@dataclass(frozen=True)
class InstitutionSplit:
    """One institution's features and labels for training or evaluation (stays local)."""

    x: np.ndarray
    y: np.ndarray


PARTS = ("train", "holdout", "fit", "validation")


def load_parts(
    institution: str,
    path: Path,
    columns: dict[str, str] | None,
    label: str,
    *,
    parts: tuple[str, ...],
    holdout_fraction: float,
    seed: int,
    validation_fraction: float | None = None,
) -> dict[str, pd.DataFrame]:
    """The `parts` rows of an institution's extract, as read (schema columns), from one read.

    train and holdout split the extract; fit and validation split train again (stratified, by
    `validation_fraction`): models learn on fit and early-stop on validation.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part {unknown[0]!r}; one of {PARTS}")
    frame = read_institution(institution, path, columns)
    train, holdout = split_holdout(frame, label, fraction=holdout_fraction, seed=seed, institution=institution)
    found = {"train": train, "holdout": holdout}
    needing = [p for p in parts if p in ("fit", "validation")]
    if needing:
        if validation_fraction is None:
            raise ValueError(f"part {needing[0]!r} needs a validation_fraction")
        found["fit"], found["validation"] = split_holdout(
            train, label, fraction=validation_fraction, seed=seed + 1, institution=institution)
    return {p: found[p] for p in parts}


def fit_rows(train_rows: int, validation_fraction: float) -> int:
    """How many rows of a training split models fit on (the rest validates), as `load_parts` splits it:
    scikit-learn rounds the validation share up."""
    return train_rows - math.ceil(validation_fraction * train_rows)


def load_part(institution: str, path: Path, columns: dict[str, str] | None, label: str, *, part: str,
              **split) -> pd.DataFrame:
    """One part (see `load_parts`) of an institution's extract."""
    return load_parts(institution, path, columns, label, parts=(part,), **split)[part]


def as_split(rows: pd.DataFrame, features: list[str], label: str) -> InstitutionSplit:
    """Rows as the float feature matrix and label vector models take."""
    return InstitutionSplit(x=rows[features].to_numpy(dtype=np.float64), y=rows[label].to_numpy(dtype=np.float64))


def load_split(
    institution: str,
    path: Path,
    columns: dict[str, str] | None,
    features: list[str],
    label: str,
    *,
    part: str,
    **split,
) -> InstitutionSplit:
    """The `part` (see `load_parts`) of an institution's extract as float arrays."""
    return as_split(load_part(institution, path, columns, label, part=part, **split), features, label)


@task(name="local-statistics", task_run_name="statistics-{institution}")
def compute_local_statistics(
    institution: str,
    path: Path,
    columns: dict[str, str] | None,
    features: list[str],
    label: str,
    holdout_fraction: float,
    seed: int,
) -> LocalStatistics:
    """Standardization aggregates of one institution's training split (no rows leave)."""
    split = load_split(
        institution, path, columns, features, label,
        part="train", holdout_fraction=holdout_fraction, seed=seed,
    )
    return local_statistics(institution, split.x, split.y)
