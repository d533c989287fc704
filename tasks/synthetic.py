"""The built-in synthetic consortium: N institutions' credit-default extracts in the UCI schema.

Each institution has its own size, customer mix and default rate (non-IID, as real portfolios
are). The label is drawn from a logistic function of the observed features, so a model can
learn it. Everything is a function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.schema import (
    BILL_COLUMNS, COLUMNS, ID_COLUMN, LABEL_COLUMN, PAY_STATUS_COLUMNS, PAYMENT_COLUMNS,
)

DATA_FILE = "credit.csv"


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
        chosen.append(Portfolio(name, rows, *[getattr(base, f) for f in (
            "default_rate", "median_limit", "age_mean", "education_mix", "risk_shift")]))
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

    logit = _default_logit(frame)
    probability = _sigmoid(logit + _intercept_for_rate(logit, portfolio.default_rate))
    frame[LABEL_COLUMN] = (rng.random(n) < probability).astype(int)
    return frame[COLUMNS]


def synthesize(out_dir: Path, n_institutions: int = 4, seed: int = 0, rows_scale: float = 1.0) -> dict[str, Path]:
    """Write each institution's extract to `out_dir/<institution>/credit.csv`; return the paths."""
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    next_id = 1
    for index, portfolio in enumerate(portfolios(n_institutions, rows_scale)):
        frame = synthesize_institution(portfolio, seed=seed * 7_919 + index, first_id=next_id)
        next_id += portfolio.rows
        path = out_dir / portfolio.name / DATA_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        paths[portfolio.name] = path
    return paths
