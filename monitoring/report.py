"""A champion's monitoring report for one institution or the consortium: this period's counts against the
development reference's, each figure with its status under the config's thresholds (runconfig.MonitoringConfig).

"act" is a breach (the population changed, the portfolio defaults above its PD, discriminatory power fell): the
reason to retrain. "warn" is a shift worth a look (a smaller shift, one grade above its PD). Without matured
outcomes only stability is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from institution.monitoring import GRADES, MonitoringCounts
from monitoring.statistics import (
    auc_drop_p_value,
    grade_auc,
    herfindahl_index,
    jeffreys_p_value,
    ks_distance,
    stability_index,
    stability_p_value,
)
from runconfig import MonitoringConfig

STATUSES = ("stable", "warn", "act")  # worst last


@dataclass(frozen=True)
class GradeBacktest:
    """One grade's back-test: the observed default rate against the grade's PD (the rate the Jeffreys test
    tests), beside the model's mean predicted probability in the grade."""

    grade: str
    rows: int
    defaults: int
    observed_rate: float
    pd: float
    predicted_rate: float
    p_value: float


@dataclass(frozen=True)
class Backtest:
    """What matured outcomes show: discriminatory power now and at development, and calibration per grade."""

    auc: float
    auc_standard_error: float
    development_auc: float
    auc_p_value: float  # the test that the AUC has not fallen since development
    ks: float
    development_ks: float
    grades: list[GradeBacktest]
    overall: GradeBacktest  # the whole portfolio as one grade


@dataclass(frozen=True)
class MonitoringReport:
    """One scope's report (an institution, or "consortium"): figures, then each breach and shift in words."""

    scope: str
    rows: int
    development_rows: int
    grade_stability: float
    feature_stability: dict[str, float]
    concentration: float  # Herfindahl index of the rows over grades
    backtest: Backtest | None
    breaches: list[str] = field(default_factory=list)  # "act": each a reason to retrain
    shifts: list[str] = field(default_factory=list)  # "warn": worth a look
    findings: list[str] = field(default_factory=list)  # each breach and shift by name only ("act: grade stability")
    at_node: bool = False  # an institution's report under secure aggregation: its figures stayed at its node

    @property
    def status(self) -> str:
        return "act" if self.breaches else "warn" if self.shifts else "stable"

    def metrics(self) -> dict[str, float]:
        """The report's figures as MLflow metrics (one run per period, so that months form a series)."""
        prefix = f"{self.scope}/"
        if self.at_node:
            return {f"{prefix}rows": float(self.rows)}
        figures = {
            "rows": float(self.rows),
            "grade_stability": self.grade_stability,
            "concentration": self.concentration,
            **{f"feature_stability/{name}": value for name, value in self.feature_stability.items()},
        }
        if self.backtest is not None:
            b = self.backtest
            figures |= {
                "auc": b.auc,
                "auc_drop": b.development_auc - b.auc,
                "auc_p_value": b.auc_p_value,
                "ks": b.ks,
                "default_rate": b.overall.observed_rate,
                "pd": b.overall.pd,
                "predicted_default_rate": b.overall.predicted_rate,
                "jeffreys_p_value": b.overall.p_value,
                **{f"jeffreys_p_value/{g.grade}": g.p_value for g in b.grades if g.rows},
            }
        return {prefix + name: float(value) for name, value in figures.items()}


def node_summary(scope: str, rows: int, status: str, findings: list[str]) -> MonitoringReport:
    """An institution's report as its node shares it under secure aggregation: its rows, its status and each
    finding by name ("act: grade stability"); the figures, counts in them, stay in the node's own report."""
    kept = "its figures stay in its node's own report"
    breaches = [f"{f.removeprefix('act: ')} ({kept})" for f in findings if f.startswith("act: ")]
    shifts = [f"{f.removeprefix('warn: ')} ({kept})" for f in findings if f.startswith("warn: ")]
    if status not in STATUSES:
        shifts.append("its node holds no development counts of this model: its own report could not be judged")
    nan = float("nan")
    return MonitoringReport(scope, rows, 0, nan, {}, nan, None, breaches, shifts, list(findings), at_node=True)


def grade_pds(calibration: MonitoringCounts, current: MonitoringCounts, basis: str) -> list[float]:
    """Each grade's PD, the rate its back-test tests: `development`, the grade's default rate over the development
    sample (`calibration`), as a rating system calibrates its master scale (the Jeffreys posterior mean
    (D + 1/2) / (N + 1), never 0 for a grade with no default yet); `predicted`, the model's mean probability in the
    grade now. A grade with no development rows takes the predicted mean."""
    pds = []
    for g, rows in enumerate(current.rows):
        predicted = current.predicted[g] / rows if rows else 0.0
        developed = calibration.rows[g] if calibration.defaults is not None else 0
        if basis == "development" and developed and calibration.defaults is not None:
            pds.append((calibration.defaults[g] + 0.5) / (developed + 1))
        else:
            pds.append(predicted)
    return pds


def _backtest(development: MonitoringCounts, current: MonitoringCounts, basis: str) -> Backtest:
    assert development.defaults is not None and current.defaults is not None
    auc, error = grade_auc(current.defaults, current.rows)
    development_auc, _ = grade_auc(development.defaults, development.rows)
    pds = grade_pds(development, current, basis)
    grades = [
        GradeBacktest(
            grade,
            rows,
            defaults,
            defaults / rows if rows else 0.0,
            pd,
            predicted / rows if rows else 0.0,
            jeffreys_p_value(defaults, rows, pd),
        )
        for grade, rows, defaults, predicted, pd in zip(
            GRADES, current.rows, current.defaults, current.predicted, pds, strict=True
        )
    ]
    total, defaults = current.total, sum(current.defaults)
    expected = sum(rows * pd for rows, pd in zip(current.rows, pds, strict=True)) / total
    overall = GradeBacktest(
        "all",
        total,
        defaults,
        defaults / total,
        expected,
        sum(current.predicted) / total,
        jeffreys_p_value(defaults, total, expected),
    )
    return Backtest(
        auc,
        error,
        development_auc,
        auc_drop_p_value(development_auc, auc, error),
        ks_distance(current.defaults, current.rows),
        ks_distance(development.defaults, development.rows),
        grades,
        overall,
    )


def monitoring_report(
    scope: str, development: MonitoringCounts, current: MonitoringCounts, thresholds: MonitoringConfig
) -> MonitoringReport:
    """`current`'s figures against `development`'s (the same grades and bins; each grade's PD from `development`,
    so that a bank is read against its own calibration, which differs from another's), judged by `thresholds`."""
    if current.total == 0:
        raise ValueError(f"{scope}: no scored rows to monitor")
    grade_stability = stability_index(development.rows, current.rows)
    feature_stability = {
        name: stability_index(development.features[name], counts) for name, counts in current.features.items()
    }
    backtest = None
    if current.defaults is not None and development.defaults is not None and 0 < sum(current.defaults) < current.total:
        backtest = _backtest(development, current, thresholds.grade_pd)
    breaches: list[str] = []
    shifts: list[str] = []
    findings: list[str] = []

    def found(act: bool, name: str, text: str) -> None:
        (breaches if act else shifts).append(text)
        findings.append(f"{'act' if act else 'warn'}: {name}")

    def stability(what: str, value: float, development_counts: list[int], current_counts: list[int]) -> None:
        if value < thresholds.stability_warn:
            return
        p = stability_p_value(development_counts, current_counts)
        if p >= thresholds.stability_p_floor:  # no more than two finite samples differ by chance
            return
        act = value >= thresholds.stability_act
        level = thresholds.stability_act if act else thresholds.stability_warn
        found(
            act, f"{what} stability", f"{what} stability index {value:.3f} at or above {level:g} (chi-square p {p:.2g})"
        )

    stability("grade", grade_stability, development.rows, current.rows)
    for name, value in feature_stability.items():
        stability(name, value, development.features[name], current.features[name])
    if backtest is not None:
        floor = thresholds.jeffreys_p_floor
        # The portfolio's test is the breach; a single grade's is a look: with six grades per institution each
        # month, one grade in a calibrated model falls below a 1 % floor every few months by chance alone.
        # Each needs the rate also above its PD by the config's share (materiality), not only significance.
        excess = 1 + thresholds.min_default_rate_excess
        for g in [*backtest.grades, backtest.overall]:
            # Significant and material: with 100,000 rows a rate a few tenths of a point above its PD is significant.
            if g.rows and g.p_value < floor and g.observed_rate >= excess * g.pd:
                where = "the portfolio" if g.grade == "all" else f"grade {g.grade}"
                found(
                    g.grade == "all",
                    f"{where.removeprefix('the ')} default rate",
                    f"{where} defaulted at {g.observed_rate:.2%} against its PD {g.pd:.2%} "
                    f"({g.defaults:,} of {g.rows:,}; Jeffreys p {g.p_value:.2g} below {floor:g})",
                )
        drop = backtest.development_auc - backtest.auc
        if drop > thresholds.max_auc_drop:
            found(
                True,
                "grade AUC",
                f"grade AUC {backtest.auc:.3f} against {backtest.development_auc:.3f} at development: "
                f"{drop:.3f} lower, more than {thresholds.max_auc_drop:g} (p {backtest.auc_p_value:.2g})",
            )
    return MonitoringReport(
        scope,
        current.total,
        development.total,
        grade_stability,
        feature_stability,
        herfindahl_index(current.rows),
        backtest,
        breaches,
        shifts,
        findings,
    )


def worst(statuses: list[str]) -> str:
    """The worst of several reports' statuses."""
    return STATUSES[max((STATUSES.index(s) for s in statuses), default=0)]


def grade_table(report: MonitoringReport) -> list[tuple[str, ...]]:
    """The back-test per grade as rows of text: grade, rows, defaults, observed, PD, predicted, p-value."""
    if report.backtest is None:
        return []
    return [
        (
            g.grade,
            f"{g.rows:,}",
            f"{g.defaults:,}",
            f"{g.observed_rate:.2%}",
            f"{g.pd:.2%}",
            f"{g.predicted_rate:.2%}",
            f"{g.p_value:.3g}",
        )
        for g in [*report.backtest.grades, report.backtest.overall]
    ]


def report_markdown(title: str, reports: list[MonitoringReport], links: list[str]) -> str:
    """The reports in Markdown (the Prefect artifact): per scope its status, stability, back-test and reasons."""
    header = ("scope", "rows", "status", "grade PSI", "largest feature PSI", "grade AUC (dev.)", "default rate (PD)")
    lines = [f"# {title}", "", f"Status: **{worst([r.status for r in reports])}**", ""]
    lines += ["| " + " | ".join(header) + " |", "|---|---:|---|---:|---|---:|---:|"]
    for r in reports:
        feature, value = max(r.feature_stability.items(), key=lambda item: item[1], default=("-", 0.0))
        b = r.backtest
        auc = f"{b.auc:.3f} ({b.development_auc:.3f})" if b else "-"
        rate = f"{b.overall.observed_rate:.2%} ({b.overall.pd:.2%})" if b else "-"
        psi = ("at its node", "at its node") if r.at_node else (f"{r.grade_stability:.3f}", f"{feature} {value:.3f}")
        cells = (r.scope, f"{r.rows:,}", r.status, *psi, auc, rate)
        lines.append("| " + " | ".join(cells) + " |")
    for r in reports:
        if r.breaches or r.shifts:
            lines += ["", f"**{r.scope}**", ""]
            lines += [f"- act: {text}" for text in r.breaches] + [f"- warn: {text}" for text in r.shifts]
    if links:
        lines += ["", *[f"- {link}" for link in links]]
    return "\n".join(lines) + "\n"
