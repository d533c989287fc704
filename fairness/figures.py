"""The fair-lending figures of one model, per protected attribute and group, from counts (institution.fairness):
at the decision (approved below the cutoff) the approval rate and the adverse impact ratio against the reference
group, the approval rate among goods (equal opportunity), the standardized mean difference of the probabilities,
each group's AUC and its calibration per grade, each with its counts and a 95 % interval.

The definitions are fairlearn's (selection rate, true positive rate) and scikit-learn's (AUC), applied to the
counts as weighted cells, so a figure from the consortium's summed counts is the figure on the pooled rows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from fairlearn.metrics import MetricFrame, selection_rate, true_positive_rate
from scipy.stats import binomtest, norm
from scipy.stats.contingency import association
from sklearn.metrics import roc_auc_score

from institution.fairness import MISSING, FairnessCounts, GroupCounts
from institution.scoring import SCORE_BANDS

Z = float(norm.ppf(0.975))


@dataclass(frozen=True)
class GroupFigures:
    """One group's figures (NaN where a figure is undefined: no rows, no goods, one outcome only)."""

    group: str
    rows: int
    bads: int
    approved: int
    approval_rate: float
    approval_interval: tuple[float, float]
    adverse_impact_ratio: float  # approval rate / the reference group's (1 for the reference itself)
    adverse_impact_interval: tuple[float, float]
    equal_opportunity: float  # approval rate among the goods
    equal_opportunity_interval: tuple[float, float]
    standardized_mean_difference: float  # of the probabilities, against the reference group
    auc: float
    auc_interval: tuple[float, float]
    observed_bad_rate: float
    predicted_bad_rate: float
    calibration: list[tuple[str, int, int, float]]  # per grade: name, rows, bads, mean predicted probability


@dataclass(frozen=True)
class AttributeFigures:
    attribute: str
    reference: str
    groups: list[GroupFigures]

    def group(self, name: str) -> GroupFigures:
        return next(g for g in self.groups if g.group == name)


def _wilson(successes: int, trials: int) -> tuple[float, float]:
    if trials == 0:
        return (math.nan, math.nan)
    interval = binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(interval.low), float(interval.high))


def _ratio_interval(a: int, n: int, b: int, m: int) -> tuple[float, float]:
    """95 % interval of the ratio of two proportions a/n over b/m (Katz's log method)."""
    if 0 in (a, b, n, m):
        return (math.nan, math.nan)
    ratio = (a / n) / (b / m)
    se = math.sqrt(1 / a - 1 / n + 1 / b - 1 / m)
    return (ratio * math.exp(-Z * se), ratio * math.exp(Z * se))


def _cells(counts: dict[str, GroupCounts]):
    """The decision's counts as weighted cells (group, good, approved): what fairlearn's metrics read."""
    groups, good, approved, weight = [], [], [], []
    for name, c in counts.items():
        approved_bads = c.approved - c.approved_goods
        for is_good, is_approved, n in (
            (1, 1, c.approved_goods),
            (0, 1, approved_bads),
            (1, 0, c.goods - c.approved_goods),
            (0, 0, c.bads - approved_bads),
        ):
            if n:
                groups.append(name)
                good.append(is_good)
                approved.append(is_approved)
                weight.append(n)
    return np.asarray(groups, dtype=object), np.asarray(good), np.asarray(approved), np.asarray(weight, dtype=float)


def _auc(c: GroupCounts) -> tuple[float, tuple[float, float]]:
    """The group's AUC of bads against goods on the probability grid (ties count half), and Hanley and McNeil's
    interval."""
    if c.bads == 0 or c.goods == 0:
        return math.nan, (math.nan, math.nan)
    bins = np.arange(len(c.bin_goods))
    y = np.concatenate([np.zeros(len(bins)), np.ones(len(bins))])
    score = np.concatenate([bins, bins])
    weight = np.concatenate([c.bin_goods, c.bin_bads]).astype(float)
    kept = weight > 0
    auc = float(roc_auc_score(y[kept], score[kept], sample_weight=weight[kept]))
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (c.bads - 1) * (q1 - auc**2) + (c.goods - 1) * (q2 - auc**2)) / (c.bads * c.goods)
    se = math.sqrt(max(variance, 0.0))
    return auc, (max(0.0, auc - Z * se), min(1.0, auc + Z * se))


def _mean_and_variance(c: GroupCounts) -> tuple[float, float]:
    if c.rows < 2:
        return (c.score_sum / c.rows if c.rows else math.nan), math.nan
    mean = c.score_sum / c.rows
    return mean, max(c.score_squares - c.rows * mean**2, 0.0) / (c.rows - 1)


def attribute_figures(attribute: str, reference: str, counts: dict[str, GroupCounts]) -> AttributeFigures:
    """Every group's figures for one protected attribute (MISSING's reported, never the reference)."""
    groups, good, approved, weight = _cells(counts)
    frame = MetricFrame(
        metrics={"approval_rate": selection_rate, "equal_opportunity": true_positive_rate},
        y_true=good,
        y_pred=approved,
        sensitive_features=groups,
        sample_params={"approval_rate": {"sample_weight": weight}, "equal_opportunity": {"sample_weight": weight}},
    )
    by_group = frame.by_group
    base = counts[reference]
    base_mean, base_variance = _mean_and_variance(base)
    figures = []
    for name, c in counts.items():
        known = name in by_group.index
        rate = float(by_group.loc[name, "approval_rate"]) if known else math.nan
        opportunity = float(by_group.loc[name, "equal_opportunity"]) if known and c.goods else math.nan
        base_rate = base.approved / base.rows if base.rows else math.nan
        mean, variance = _mean_and_variance(c)
        spread = math.sqrt((variance + base_variance) / 2) if c.rows > 1 and base.rows > 1 else math.nan
        auc, auc_interval = _auc(c)
        figures.append(
            GroupFigures(
                group=name,
                rows=c.rows,
                bads=c.bads,
                approved=c.approved,
                approval_rate=rate,
                approval_interval=_wilson(c.approved, c.rows),
                adverse_impact_ratio=rate / base_rate if base_rate else math.nan,
                adverse_impact_interval=_ratio_interval(c.approved, c.rows, base.approved, base.rows),
                equal_opportunity=opportunity,
                equal_opportunity_interval=_wilson(c.approved_goods, c.goods),
                standardized_mean_difference=(mean - base_mean) / spread if spread else math.nan,
                auc=auc,
                auc_interval=auc_interval,
                observed_bad_rate=c.bads / c.rows if c.rows else math.nan,
                predicted_bad_rate=mean,
                calibration=[
                    (grade, rows, bads, predicted / rows if rows else math.nan)
                    for (grade, _), rows, bads, predicted in zip(
                        SCORE_BANDS, c.grade_rows, c.grade_bads, c.grade_predicted, strict=True
                    )
                ],
            )
        )
    return AttributeFigures(attribute, reference, figures)


def fairness_figures(counts: FairnessCounts, references: dict[str, str]) -> list[AttributeFigures]:
    """Each protected attribute's figures; `references`: attribute -> its reference group (the schema's)."""
    return [attribute_figures(name, references[name], groups) for name, groups in counts.attributes.items()]


def judged_groups(figures: AttributeFigures, min_rows: int) -> tuple[list[GroupFigures], list[GroupFigures]]:
    """The groups a guardrail judges (not the reference, not MISSING, with at least `min_rows` rows) and those
    too small to judge."""
    others = [g for g in figures.groups if g.group not in (figures.reference, MISSING)]
    return [g for g in others if g.rows >= min_rows], [g for g in others if g.rows < min_rows]


def proxy_strengths(counts: FairnessCounts) -> dict[str, dict[str, float]]:
    """Per protected attribute, each model feature's association with it over every institution's development
    rows: Cramér's V of the feature's development bins by the attribute's groups (0: none; 1: the feature tells
    the group), strongest first. A strong proxy carries the attribute into a model that never sees it."""
    strengths = {}
    for attribute, features in counts.proxies.items():
        found = {}
        for feature, table in features.items():
            cells = np.asarray(table, dtype=np.int64)
            cells = cells[cells.sum(axis=1) > 0][:, cells.sum(axis=0) > 0]
            found[feature] = float(association(cells, method="cramer")) if min(cells.shape) > 1 else 0.0
        strengths[attribute] = dict(sorted(found.items(), key=lambda item: -item[1]))
    return strengths
