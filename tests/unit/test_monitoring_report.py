"""The monitoring report: what a stable month, a shifted month and a month without outcomes call for, and the figures
it logs, on counts drawn from a model that is calibrated at development."""

import numpy as np
import pytest

from institution.monitoring import GRADES, add_counts, monitoring_counts
from monitoring.report import grade_pds, grade_table, monitoring_report, node_summary, report_markdown, worst
from riskmodel.bins import FeatureBins
from runconfig import MonitoringConfig

LIMIT = FeatureBins("LIMIT_BAL", edges=(50_000.0, 150_000.0, 300_000.0))
THRESHOLDS = MonitoringConfig()


def _month(seed: int, n: int, limit_scale: float = 1.0, extra_risk: float = 0.0, outcomes: bool = True):
    """One month of scored rows: the model's probability, outcomes drawn from the true risk (the model's, plus
    `extra_risk` log-odds the model does not know), a limit that `limit_scale` moves."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(0.0, 1.0, n)
    probability = 1 / (1 + np.exp(-(risk - 1.8)))
    truth = 1 / (1 + np.exp(-(risk - 1.8 + extra_risk)))
    limit = limit_scale * np.exp(rng.normal(11.5 - 0.3 * risk, 0.6))
    y = (rng.random(n) < truth).astype(float) if outcomes else None
    return monitoring_counts(probability, {"LIMIT_BAL": limit}, [LIMIT], y)


@pytest.fixture(scope="module")
def development():
    return _month(1, 20_000)


def test_a_month_of_the_same_population_is_stable(development):
    report = monitoring_report("alder_bank", development, _month(2, 5_000), THRESHOLDS)
    assert report.status == "stable" and report.breaches == [] and report.shifts == []
    assert report.grade_stability < 0.02 and report.feature_stability["LIMIT_BAL"] < 0.02
    assert report.backtest is not None and report.backtest.overall.p_value > 0.01
    assert abs(report.backtest.auc - report.backtest.development_auc) < 0.03


def test_shifted_limits_and_a_higher_default_rate_are_breaches_named_with_their_figures(development):
    report = monitoring_report(
        "dune_finance", development, _month(3, 5_000, limit_scale=0.3, extra_risk=0.8), THRESHOLDS
    )
    assert report.status == "act"
    limit_psi = report.feature_stability["LIMIT_BAL"]
    assert limit_psi >= 0.25
    assert any(
        b.startswith(f"LIMIT_BAL stability index {limit_psi:.3f} at or above 0.25 (chi-square p ")
        for b in report.breaches
    )
    overall = report.backtest.overall
    assert overall.observed_rate > overall.pd and overall.p_value < 0.01
    assert any(
        b.startswith(f"the portfolio defaulted at {overall.observed_rate:.2%} against its PD") for b in report.breaches
    )
    # The same findings by name alone: what a node shares of its own report under secure aggregation.
    assert "act: LIMIT_BAL stability" in report.findings and "act: portfolio default rate" in report.findings
    assert not any(character.isdigit() for finding in report.findings for character in finding)
    assert len(report.findings) == len(report.breaches) + len(report.shifts)
    shared = node_summary("dune_finance", report.rows, report.status, report.findings)
    assert shared.status == "act" and shared.at_node and shared.metrics() == {"dune_finance/rows": report.rows}
    assert "LIMIT_BAL stability (its figures stay in its node's own report)" in shared.breaches
    markdown = report_markdown("t", [shared], [])
    assert "| dune_finance | 5,000 | act | at its node | at its node | - | - |" in markdown
    assert node_summary("a", 10, "unknown", []).status == "warn"  # no development counts at its node: said


def test_a_small_banks_month_that_moves_the_index_by_chance_alone_is_not_a_finding():
    small_development = _month(10, 120)
    month = _month(11, 60)  # the same population: with 60 and 120 rows over 10 bins the index is noise
    report = monitoring_report("elm_bank", small_development, month, THRESHOLDS)
    noisy = {name: v for name, v in report.feature_stability.items() if v >= THRESHOLDS.stability_warn}
    assert noisy or report.grade_stability >= THRESHOLDS.stability_warn  # an index above the look threshold ...
    assert report.status == "stable", report.breaches + report.shifts  # ... that the chi-square test calls noise
    lenient = MonitoringConfig(stability_p_floor=0.49)
    assert monitoring_report("elm_bank", small_development, month, lenient).status != "stable"


def test_one_grade_above_its_pd_is_a_look_not_a_breach(development):
    month = _month(4, 5_000)
    e = GRADES.index("E")
    defaults = list(month.defaults)
    defaults[e] = min(month.rows[e], int(defaults[e] * 1.5) + 5)  # one grade's defaults up by half, the rest as is
    shifted = type(month)(month.rows, month.predicted, defaults, month.features)
    thresholds = MonitoringConfig(jeffreys_p_floor=0.01)
    report = monitoring_report("birch_credit_union", development, shifted, thresholds)
    grade = report.backtest.grades[e]
    assert grade.p_value < 0.01
    assert any(s.startswith("grade E defaulted at") for s in report.shifts)
    assert not any(b.startswith("grade E") for b in report.breaches)


def test_a_fall_in_discriminatory_power_is_a_breach(development):
    rng = np.random.default_rng(5)
    n = 5_000
    probability = 1 / (1 + np.exp(-(rng.normal(0.0, 1.0, n) - 1.8)))
    y = (rng.random(n) < rng.permutation(probability)).astype(float)  # outcomes no longer follow the score
    month = monitoring_counts(probability, {"LIMIT_BAL": np.full(n, 100_000.0)}, [LIMIT], y)
    report = monitoring_report("cedar_savings", development, month, THRESHOLDS)
    drop = report.backtest.development_auc - report.backtest.auc
    assert drop > 0.05 and report.backtest.auc_p_value < 0.001
    assert any(b.startswith(f"grade AUC {report.backtest.auc:.3f} against") for b in report.breaches)


def test_without_matured_outcomes_only_stability_is_reported(development):
    report = monitoring_report("alder_bank", development, _month(6, 3_000, outcomes=False), THRESHOLDS)
    assert report.backtest is None and grade_table(report) == []
    assert set(report.metrics()) == {
        "alder_bank/rows",
        "alder_bank/grade_stability",
        "alder_bank/concentration",
        "alder_bank/feature_stability/LIMIT_BAL",
    }


def test_a_grades_pd_is_its_development_default_rate_or_the_models_mean(development):
    month = _month(7, 4_000)
    development_pds = grade_pds(development, month, "development")
    for g, pd in enumerate(development_pds):
        if development.rows[g]:
            assert pd == pytest.approx((development.defaults[g] + 0.5) / (development.rows[g] + 1))
    predicted = grade_pds(development, month, "predicted")
    assert predicted == pytest.approx([p / r if r else 0.0 for p, r in zip(month.predicted, month.rows, strict=True)])


def test_the_consortiums_report_sums_the_institutions_and_the_markdown_names_each_scope(development):
    parts = [_month(8, 3_000), _month(9, 2_000, limit_scale=0.3, extra_risk=0.8)]
    reports = [monitoring_report(name, development, part, THRESHOLDS) for name, part in zip(("a", "b"), parts)]
    reports.append(monitoring_report("consortium", development, add_counts(parts), THRESHOLDS))
    assert reports[-1].rows == 5_000 and worst([r.status for r in reports]) == "act"
    assert [r.status for r in reports[:2]] == ["stable", "act"]
    text = report_markdown("Monitoring of m version 1, 2026-12", reports, ["MLflow run: http://x"])
    assert text.startswith("# Monitoring of m version 1, 2026-12\n\nStatus: **act**")
    assert (
        "| b | 2,000 | act |" in text
        and "- act: LIMIT_BAL stability index" in text
        and "- MLflow run: http://x" in text
    )


def test_thresholds_are_checked_when_the_config_is_read():
    with pytest.raises(ValueError, match="stability_act must be above"):
        MonitoringConfig(stability_warn=0.3, stability_act=0.2)


def test_a_significant_but_immaterial_excess_over_the_pd_is_not_a_breach():
    development, month = _month(12, 200_000), _month(13, 200_000, extra_risk=0.05)  # a few tenths of a point more
    report = monitoring_report("alder_bank", development, month, THRESHOLDS)
    overall = report.backtest.overall
    assert overall.p_value < 0.01 and overall.observed_rate < 1.1 * overall.pd  # significant, under 10 % above
    assert not any(b.startswith("the portfolio") for b in report.breaches)
    strict = MonitoringConfig(min_default_rate_excess=0.0)
    assert any(
        b.startswith("the portfolio") for b in monitoring_report("alder_bank", development, month, strict).breaches
    )
