"""The figures of a champion's monitoring report, from counts alone (institution.monitoring): what a bank's
model validation computes each period, as the ECB's instructions for validating internal rating models define
them, on the master scale's grades.

- Stability: the population stability index of the grades, and of each feature's bins (characteristic stability),
  against the development sample.
- Discriminatory power: the AUC on grades with its DeLong standard error, the test that it has not fallen since
  development, and the Kolmogorov-Smirnov distance.
- Back-testing: per grade and overall, the Jeffreys test of the observed default rate against the predicted one.
- Concentration: the Herfindahl index of the rows over grades.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

# An empty bin would make the stability index infinite: proportions are floored here (a common convention).
PROPORTION_FLOOR = 1e-4


def _counts(values: Sequence[float]) -> np.ndarray:
    counts = np.asarray(values, dtype=float)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("counts must be one non-negative number per bin")
    return counts


def stability_index(development: Sequence[float], current: Sequence[float]) -> float:
    """Population stability index of `current` against `development`, counts over the same bins:
    sum over bins of (c - d) * ln(c / d), c and d each bin's proportion (floored at PROPORTION_FLOOR).
    Under 0.10 stable; 0.10-0.25 a shift worth a look; over 0.25 a different population (industry practice)."""
    d, c = _counts(development), _counts(current)
    if d.shape != c.shape or d.sum() == 0 or c.sum() == 0:
        raise ValueError("stability needs counts over the same bins, neither sample empty")
    d, c = np.maximum(d / d.sum(), PROPORTION_FLOOR), np.maximum(c / c.sum(), PROPORTION_FLOOR)
    return float(np.sum((c - d) * np.log(c / d)))


def stability_p_value(development: Sequence[float], current: Sequence[float]) -> float:
    """p-value of the chi-square test that both samples' counts over the same bins come from one population (bins
    neither fills left out): whether a stability index is more than the sampling noise of two finite samples,
    which moves it by about (bins - 1) * (1/N_development + 1/N_current) on its own."""
    d, c = _counts(development), _counts(current)
    if d.shape != c.shape or d.sum() == 0 or c.sum() == 0:
        raise ValueError("stability needs counts over the same bins, neither sample empty")
    filled = (d + c) > 0
    if filled.sum() < 2:
        return 1.0
    return float(stats.chi2_contingency(np.vstack([d[filled], c[filled]]), correction=False)[1])


def _outcomes(defaults: Sequence[float], rows: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    pos, total = _counts(defaults), _counts(rows)
    neg = total - pos
    if pos.shape != total.shape or (neg < 0).any():
        raise ValueError("defaults must be at most the rows of each grade")
    if pos.sum() == 0 or neg.sum() == 0:
        raise ValueError("discriminatory power needs both defaults and non-defaults")
    return pos, neg


def grade_auc(defaults: Sequence[float], rows: Sequence[float]) -> tuple[float, float]:
    """AUC of the grades (best first) and its DeLong standard error: the chance that a defaulter is in a worse
    grade than a non-defaulter, ties counting half; the same as the AUC of the grade as a score over the rows."""
    pos, neg = _outcomes(defaults, rows)
    m, n = pos.sum(), neg.sum()
    # A defaulter's placement: the share of non-defaulters in better grades (half of its own); and the converse.
    below = (np.cumsum(neg) - neg + 0.5 * neg) / n
    above = (pos.sum() - np.cumsum(pos) + 0.5 * pos) / m
    auc = float(np.sum(pos * below) / m)
    variance = 0.0
    if m > 1:
        variance += float(np.sum(pos * (below - auc) ** 2) / (m - 1) / m)
    if n > 1:
        variance += float(np.sum(neg * (above - auc) ** 2) / (n - 1) / n)
    return auc, float(np.sqrt(variance))


def auc_drop_p_value(development_auc: float, current_auc: float, current_standard_error: float) -> float:
    """p-value of the test that the AUC has not fallen since development: S = (AUC_dev - AUC_now) / s_now,
    p = 1 - Phi(S). A small p (under 0.05, say) is a significant loss of discriminatory power."""
    if current_standard_error <= 0:
        return 0.0 if current_auc < development_auc else 1.0
    return float(stats.norm.sf((development_auc - current_auc) / current_standard_error))


def ks_distance(defaults: Sequence[float], rows: Sequence[float]) -> float:
    """Kolmogorov-Smirnov distance between the grade distributions of defaulters and non-defaulters."""
    pos, neg = _outcomes(defaults, rows)
    return float(np.max(np.abs(np.cumsum(neg) / neg.sum() - np.cumsum(pos) / pos.sum())))


def jeffreys_p_value(defaults: float, rows: float, predicted_default_rate: float) -> float:
    """p-value of the Jeffreys test that the default rate is not above `predicted_default_rate`: the Beta(D + 1/2,
    N - D + 1/2) distribution function (the posterior of the rate under Jeffreys' prior) at the prediction. Small
    when more of the `rows` defaulted than predicted; 1 for a grade with no rows (nothing to test)."""
    if rows <= 0:
        return 1.0
    if not 0 <= defaults <= rows:
        raise ValueError("defaults must be between 0 and the rows")
    return float(stats.beta.cdf(predicted_default_rate, defaults + 0.5, rows - defaults + 0.5))


def herfindahl_index(rows: Sequence[float]) -> float:
    """Concentration of the rows over grades: the sum of squared shares (1/grades when even, 1 when all in one)."""
    share = _counts(rows) / max(float(np.sum(rows)), 1.0)
    return float(np.sum(share**2))
