"""The monitoring report as one self-contained HTML page (the monitoring run's artifact): the status and every
finding per scope, the figures, the back-test per grade, the plots and the thresholds. Counts only: no row."""

from __future__ import annotations

import html

from monitoring.report import MonitoringReport, grade_table, worst
from runconfig import MonitoringConfig
from tracking.model_card import STYLE, _png, _table

STATUS_CLASS = {"stable": "pass", "warn": "warn", "act": "fail"}


def _figures(report: MonitoringReport) -> list[list[str]]:
    if report.at_node:
        return [["rows", f"{report.rows:,}"], ["figures", "kept in its node's own report (secure aggregation)"]]
    rows = [
        ["rows (development)", f"{report.rows:,} ({report.development_rows:,})"],
        ["grade stability index", f"{report.grade_stability:.3f}"],
        ["concentration over grades (Herfindahl)", f"{report.concentration:.3f}"],
    ]
    b = report.backtest
    if b is not None:
        rows += [
            ["grade AUC (development)", f"{b.auc:.3f} ({b.development_auc:.3f})"],
            ["p-value of a fall in AUC", f"{b.auc_p_value:.3g}"],
            ["KS (development)", f"{b.ks:.3f} ({b.development_ks:.3f})"],
            ["default rate (PD)", f"{b.overall.observed_rate:.2%} ({b.overall.pd:.2%})"],
            ["Jeffreys p-value, the portfolio", f"{b.overall.p_value:.3g}"],
        ]
    return rows


def monitoring_page_html(
    label: str, period: str, reports: list[MonitoringReport], thresholds: MonitoringConfig, plots: dict[str, bytes]
) -> str:
    """The page: `label` (model and version) monitored for `period`; `plots` PNGs by name, embedded."""
    e = html.escape
    status = worst([r.status for r in reports])
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Monitoring of {e(label)}, {e(period)}"
        f"</title><style>{STYLE}.warn{{color:#8a5a00}}</style></head><body>",
        f"<h1>Monitoring of {e(label)}, {e(period)}</h1>",
        f"<p>Status: <b class={STATUS_CLASS[status]}>{e(status)}</b>. Each institution's extract of this period "
        f"against its own development sample, and the consortium's sum against the consortium's. Counts only left "
        f"each institution.</p>",
    ]
    for report in reports:
        parts.append(f"<h2>{e(report.scope)}: <span class={STATUS_CLASS[report.status]}>{e(report.status)}</span></h2>")
        findings = [f"<li class=fail>act: {e(t)}</li>" for t in report.breaches]
        findings += [f"<li class=warn>warn: {e(t)}</li>" for t in report.shifts]
        parts.append(f"<ul>{''.join(findings)}</ul>" if findings else "<p class=muted>no finding</p>")
        parts.append(_table(["figure", "now"], _figures(report)))
        grades = grade_table(report)
        if grades:
            parts.append(_table(["grade", "rows", "defaults", "observed", "PD", "predicted", "Jeffreys p"], grades))
    for name, image in plots.items():
        title = e(name.replace("_", " ").capitalize())
        parts.append(f"<h2>{title}</h2><img alt='{e(name)}' src='data:image/png;base64,{_png(image)}'>")
    parts.append("<h2>Thresholds (the run config's monitoring)</h2>")
    parts.append(_table(["setting", "value"], [[e(k), e(str(v))] for k, v in thresholds.model_dump().items()]))
    parts.append("</body></html>")
    return "\n".join(parts)
