"""Synthetic consortia: N institutions' extracts for any schema, and a seeded split of a real file.

The credit-default schema has a hand-made generator (the demo's): each institution has its own
size, customer mix and default rate (non-IID, as real portfolios are). Any other schema gets a
generic one that follows its declaration (ranges, code sets, levels, missing values) with
institution-specific shifts. Either way the label is a logistic function of the features, so a
model can learn it, and everything is a function of the seed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from contract.data import institution_seed, spreadsheet_safe
from contract.schema import NumericFeature, Schema

# The credit-default layout, as the hand-made generator writes it (schemas/credit_default.yaml).
ID_COLUMN = "ID"
LABEL_COLUMN = "default.payment.next.month"
PAY_STATUS_COLUMNS = ["PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"]
BILL_COLUMNS = [f"BILL_AMT{i}" for i in range(1, 7)]
PAYMENT_COLUMNS = [f"PAY_AMT{i}" for i in range(1, 7)]
COLUMNS = [
    ID_COLUMN,
    "LIMIT_BAL",
    "SEX",
    "EDUCATION",
    "MARRIAGE",
    "AGE",
    *PAY_STATUS_COLUMNS,
    *BILL_COLUMNS,
    *PAYMENT_COLUMNS,
    LABEL_COLUMN,
]
DATA_FILE = "credit.csv"
# What a later month (or a scenario) may change of a portfolio.
CHANGEABLE = ("rows", "default_rate", "median_limit", "age_mean", "risk_shift", "sex_bias")


@dataclass(frozen=True)
class Portfolio:
    """What makes one institution's customers different from another's."""

    name: str
    rows: int
    default_rate: float
    median_limit: float  # NT$, median credit limit
    age_mean: float
    education_mix: tuple[float, float, float, float]  # graduate, university, high school, other
    risk_shift: float  # extra latent delinquency of this customer base
    # A history biased against women (SEX 2): their limits were set lower, by exp(-sex_bias), and their defaults
    # recorded at exp(sex_bias) times the odds of a man's with the same record (0: none).
    sex_bias: float = 0.0


PORTFOLIOS = [
    Portfolio("alder_bank", 20_000, 0.17, 200_000, 40, (0.45, 0.40, 0.12, 0.03), -0.3),
    Portfolio("birch_credit_union", 8_000, 0.23, 120_000, 36, (0.30, 0.48, 0.19, 0.03), 0.0),
    Portfolio("cedar_savings", 4_000, 0.29, 70_000, 31, (0.15, 0.45, 0.36, 0.04), 0.3),
    Portfolio("dune_finance", 2_000, 0.36, 40_000, 29, (0.08, 0.37, 0.50, 0.05), 0.6),
]


def portfolios(n_institutions: int, rows_scale: float = 1.0) -> list[Portfolio]:
    """The first N portfolios; beyond four, the four profiles repeat under new names."""
    chosen = []
    for i in range(n_institutions):
        base = PORTFOLIOS[i % len(PORTFOLIOS)]
        name = base.name if i < len(PORTFOLIOS) else f"institution_{i + 1:02d}"
        rows = max(1, int(round(base.rows * rows_scale)))
        chosen.append(
            Portfolio(
                name,
                rows,
                *[
                    getattr(base, f)
                    for f in ("default_rate", "median_limit", "age_mean", "education_mix", "risk_shift")
                ],
            )
        )
    return chosen


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _default_logit(frame: pd.DataFrame) -> np.ndarray:
    """Default log-odds from observed features only (before the portfolio's intercept)."""
    pay = frame[PAY_STATUS_COLUMNS].to_numpy(dtype=float)
    delay = np.clip(pay, 0, None)
    bills = frame[BILL_COLUMNS].to_numpy(dtype=float)
    paid = frame[PAYMENT_COLUMNS].to_numpy(dtype=float)
    limit = frame["LIMIT_BAL"].to_numpy(dtype=float)
    utilization = np.clip(bills[:, 0] / limit, -0.5, 2.0)
    paid_share = np.clip(paid.sum(axis=1) / np.maximum(bills.sum(axis=1), 1.0), 0.0, 2.0)
    age = frame["AGE"].to_numpy(dtype=float)
    return (
        1.4 * delay[:, 0]
        + 0.3 * delay[:, 1:].mean(axis=1)
        - 0.4 * np.log(limit / 100_000)
        + 2.0 * utilization
        - 1.0 * paid_share
        + 0.012 * np.abs(age - 38)
        + 0.15 * (frame["EDUCATION"].to_numpy() == 3)
    )


def _intercept_for_rate(logit: np.ndarray, rate: float) -> float:
    """The intercept that makes the mean default probability equal `rate` (bisection)."""
    low, high = -20.0, 20.0
    for _ in range(60):
        mid = (low + high) / 2
        if _sigmoid(logit + mid).mean() < rate:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def synthesize_institution(portfolio: Portfolio, seed: int, first_id: int = 1) -> pd.DataFrame:
    """One institution's extract: `portfolio.rows` customers with raw UCI-schema values."""
    rng = np.random.default_rng(seed)
    n = portfolio.rows
    sex = rng.choice([1, 2], size=n, p=[0.4, 0.6])
    education = rng.choice([1, 2, 3, 4], size=n, p=portfolio.education_mix)
    rare = rng.random(n) < 0.01
    education[rare] = rng.choice([0, 5, 6], size=rare.sum())
    age = np.clip(np.round(rng.normal(portfolio.age_mean, 8.5, size=n)), 21, 79).astype(int)
    married = np.where(age > 30, 0.6, 0.25)
    marriage = np.where(rng.random(n) < married, 1, np.where(rng.random(n) < 0.95, 2, 3))
    marriage[rng.random(n) < 0.002] = 0
    education_boost = np.array([1.0, 1.4, 1.15, 0.85, 1.0, 1.0, 1.0])[education]
    limit = portfolio.median_limit * education_boost * np.exp(rng.normal(0, 0.6, size=n))
    limit = limit * np.where(sex == 2, np.exp(-portfolio.sex_bias), 1.0)
    limit = np.clip(np.round(limit / 10_000) * 10_000, 10_000, 1_000_000).astype(int)

    # Latent delinquency drives payment statuses month by month (PAY_6 oldest, PAY_0 latest).
    propensity = portfolio.risk_shift + rng.normal(0, 1, size=n) - 0.2 * np.log(limit / 100_000)
    pay = np.zeros((n, 6), dtype=int)
    delay = np.zeros(n)
    for month in range(5, -1, -1):
        u = propensity + 0.6 * rng.normal(size=n) + 0.35 * delay
        status = np.where(u < -1.3, -2, np.where(u < -0.5, -1, np.where(u < 1.5, 0, 1)))
        late = status == 1
        status[late] = np.minimum(8, 1 + np.floor((u[late] - 1.5) / 0.6)).astype(int)
        pay[:, month] = status
        delay = np.clip(status, 0, None)

    utilization = np.clip(rng.beta(2, 3, size=n) + 0.15 * (propensity > 0.5), 0, 1.2)
    bills = np.zeros((n, 6))
    payments = np.zeros((n, 6))
    for month in range(6):
        bill = limit * utilization * (1 + rng.normal(0, 0.08, size=n))
        bill[pay[:, month] == -2] = 0
        refund = rng.random(n) < 0.01
        bill[refund] = -rng.uniform(100, 5_000, size=refund.sum())
        bills[:, month] = np.round(bill)
        share = np.select(
            [pay[:, month] == -1, pay[:, month] <= 0],
            [rng.uniform(0.9, 1.0, size=n), rng.uniform(0.03, 0.2, size=n)],
            default=rng.uniform(0.0, 0.03, size=n),
        )
        payments[:, month] = np.round(np.clip(bills[:, month], 0, None) * share)

    frame = pd.DataFrame({ID_COLUMN: np.arange(first_id, first_id + n)})
    frame["LIMIT_BAL"] = limit
    frame["SEX"] = sex
    frame["EDUCATION"] = education
    frame["MARRIAGE"] = marriage
    frame["AGE"] = age
    for i, column in enumerate(PAY_STATUS_COLUMNS):
        frame[column] = pay[:, i]
    for i, column in enumerate(BILL_COLUMNS):
        frame[column] = bills[:, i].astype(int)
    for i, column in enumerate(PAYMENT_COLUMNS):
        frame[column] = payments[:, i].astype(int)

    logit = _default_logit(frame) + portfolio.sex_bias * (sex == 2)
    probability = _sigmoid(logit + _intercept_for_rate(logit, portfolio.default_rate))
    frame[LABEL_COLUMN] = (rng.random(n) < probability).astype(int)
    return frame[COLUMNS]


def data_file(schema_name: str) -> str:
    """The file name of a synthetic institution's extract (the demo's is credit.csv)."""
    return DATA_FILE if schema_name == "credit_default" else f"{schema_name}.csv"


def synthesize(
    out_dir: Path,
    n_institutions: int = 4,
    seed: int = 0,
    rows_scale: float = 1.0,
    schema: Schema | None = None,
    changes: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write each institution's extract to `out_dir/<institution>/<file>`; return the paths. The
    credit-default schema (the default) has its own generator; any other `schema` the generic one. Another seed
    gives another month of the same portfolios; `changes` (credit-default only) alters an institution's portfolio
    that month, e.g. {"dune_finance": {"median_limit": 120_000, "default_rate": 0.5}}."""
    if schema is not None and schema.name != "credit_default":
        if changes:
            raise ValueError("portfolio changes are for the credit-default generator")
        return synthesize_schema(schema, out_dir, n_institutions, seed, rows_scale)
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    next_id = 1
    chosen = portfolios(n_institutions, rows_scale)
    unknown = set(changes or {}) - {p.name for p in chosen}
    if unknown:
        raise ValueError(f"no portfolio named {sorted(unknown)} (they are {', '.join(p.name for p in chosen)})")
    for fields in (changes or {}).values():
        if set(fields) - set(CHANGEABLE):
            raise ValueError(f"a portfolio's changeable fields are {', '.join(CHANGEABLE)}")
    for index, portfolio in enumerate(chosen):
        changed = (changes or {}).get(portfolio.name, {})
        moved: dict[str, Any] = {k: int(v) if k == "rows" else float(v) for k, v in changed.items()}
        portfolio = replace(portfolio, **moved)
        frame = synthesize_institution(portfolio, seed=seed * 7_919 + index, first_id=next_id)
        next_id += portfolio.rows
        path = out_dir / portfolio.name / DATA_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        paths[portfolio.name] = path
    return paths


GENERIC_ROWS = (4_000, 2_000, 1_000, 600)


def _numeric(rng: np.random.Generator, feature: NumericFeature, n: int, shift: float) -> np.ndarray:
    """Values inside the feature's declared range (or code set), centred differently per institution."""
    if feature.allowed:
        codes = np.asarray(feature.allowed, dtype=float)
        weights = rng.dirichlet(np.full(len(codes), 2.0))
        return rng.choice(codes, size=n, p=weights)
    low = feature.min if feature.min is not None else -100.0
    high = feature.max if feature.max is not None else low + 200.0
    if low >= 0 and high > 100 * max(low, 1.0):  # amounts: log-normal within the range
        centre = np.log(max(low, 1.0)) + (np.log(high) - np.log(max(low, 1.0))) * (0.35 + 0.1 * shift)
        values = np.exp(rng.normal(centre, 0.7, size=n))
    else:
        span = high - low
        values = rng.normal(low + span * (0.45 + 0.08 * shift), span / 8, size=n)
    values = np.clip(values, low, high)
    return np.round(values) if feature.dtype == "int" else np.round(values, 4)


def synthesize_schema(
    schema: Schema, out_dir: Path, n_institutions: int = 3, seed: int = 0, rows_scale: float = 1.0
) -> dict[str, Path]:
    """A plausible non-IID consortium for any schema: each institution its own size, feature shifts, level
    mix and positive rate, the label a logistic function of the features."""
    rng = np.random.default_rng(seed)
    effects = {name: rng.normal(0, 1) for name in schema.features}
    low, high = schema.label_rate
    base_rate = low + (high - low) * 0.3
    paths, next_id, out_dir = {}, 1, Path(out_dir)
    for index, portfolio in enumerate(portfolios(n_institutions)):
        local = np.random.default_rng(institution_seed(seed, portfolio.name))
        n = max(schema.min_rows + 50, int(round(GENERIC_ROWS[index % len(GENERIC_ROWS)] * rows_scale)))
        shift = index - (n_institutions - 1) / 2
        frame, logit = pd.DataFrame(), np.zeros(n)
        if schema.id:
            frame[schema.id] = np.arange(next_id, next_id + n)
        for name, feature in schema.features.items():
            if feature.type == "numeric":
                values = _numeric(local, feature, n, shift)
                scale = values.std() or 1.0
                logit += effects[name] * (values - values.mean()) / scale * 0.6
            elif feature.type == "boolean":
                values = (local.random(n) < 0.3 + 0.1 * np.tanh(shift)).astype(int)
                logit += effects[name] * values
            else:
                levels = feature.levels if feature.levels != "open" else [f"level_{i}" for i in range(1, 9)]
                level_effects = np.random.default_rng([seed, len(name)]).normal(0, 0.8, size=len(levels))
                chosen = local.choice(len(levels), size=n, p=local.dirichlet(np.full(len(levels), 3.0)))
                values = np.asarray(levels, dtype=object)[chosen]
                logit += level_effects[chosen]
            if feature.missing is not None:
                values = pd.Series(values, dtype=object if feature.type == "categorical" else float)
                values[local.random(n) < feature.missing.max_rate / 2] = np.nan
            frame[name] = values
        rate = np.clip(base_rate * (1 + 0.25 * np.tanh(shift)), low * 1.5, high * 0.9)
        probability = _sigmoid(logit + _intercept_for_rate(logit, rate))
        positive = local.random(n) < probability
        frame[schema.label.column] = np.where(positive, schema.label.positive, schema.label.negative)
        path = out_dir / portfolio.name / data_file(schema.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        paths[portfolio.name] = path
        next_id += n
    return paths


def split_file(
    frame: pd.DataFrame, label: str, names: list[str], seed: int, id_column: str | None, out_dir: Path
) -> dict[str, Path]:
    """Split one real extract into institutions of equal size, stratified on the label and seeded, each
    written to `out_dir/<name>.csv`; adds a running `id_column` when the extract has none."""
    if id_column and id_column not in frame.columns:
        frame = frame.assign(**{id_column: np.arange(1, len(frame) + 1)})[[id_column, *frame.columns]]
    folds = StratifiedKFold(n_splits=len(names), shuffle=True, random_state=seed).split(frame, frame[label])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (_, rows) in zip(names, folds, strict=True):
        path = out_dir / f"{name}.csv"
        spreadsheet_safe(frame.iloc[np.sort(rows)]).to_csv(path, index=False)
        paths[name] = path
    return paths


MAX_INSTITUTIONS_BY_COLUMN = 100


def institution_name(value: object) -> str:
    """An institution name from a column's value (`CA` -> `ca`, `New York` -> `new_york`, 3.0 -> `3`)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    name = re.sub(r"[^a-z0-9]+", "_", str(value).strip().lower()).strip("_")
    return name or "blank"


def split_by_column(
    frame: pd.DataFrame, column: str, id_column: str | None, out_dir: Path, keep_column: bool = False
) -> dict[str, Path]:
    """Split one extract into one institution per value of `column` (a US state, a branch), each written to
    `out_dir/<value>.csv`, the column dropped unless `keep_column`; adds a running `id_column` when the extract has
    none. ValueError (naming the column) for a missing column, missing values, or too many or clashing names."""
    if column not in frame.columns:
        raise ValueError(f"no column {column!r} to split by (columns: {', '.join(map(str, frame.columns[:20]))})")
    missing = int(frame[column].isna().sum())
    if missing:
        raise ValueError(
            f"{missing} row(s) have no {column} value: every row must belong to an institution "
            f"(fill them, or drop those rows)"
        )
    values = list(dict.fromkeys(frame[column]))
    if len(values) > MAX_INSTITUTIONS_BY_COLUMN:
        raise ValueError(
            f"{column} has {len(values)} distinct values: at most {MAX_INSTITUTIONS_BY_COLUMN} "
            f"institutions (is it the right column?)"
        )
    names: dict[str, object] = {}
    for value in values:
        name = institution_name(value)
        if name in names:
            raise ValueError(f"{column} values {names[name]!r} and {value!r} both name institution {name!r}")
        names[name] = value
    if id_column and id_column not in frame.columns:
        frame = frame.assign(**{id_column: np.arange(1, len(frame) + 1)})[[id_column, *frame.columns]]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, value in sorted(names.items()):
        rows = frame[frame[column] == value]
        path = out_dir / f"{name}.csv"
        spreadsheet_safe(rows if keep_column else rows.drop(columns=[column])).to_csv(path, index=False)
        paths[name] = path
    return paths
