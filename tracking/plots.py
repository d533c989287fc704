"""The figures a reader looks at rather than reads: convergence, ROC per institution, calibration.

Built from aggregates only (per-round metrics, ROC rates at fixed thresholds, calibration bins).
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global figure state, no display

from institution.evaluation import ROLE_LABELS, InstitutionEvaluation, pooled_calibration


def png(figure: Figure) -> bytes:
    """The figure as a PNG, rendered once: logged as the run's plot and embedded in the card as it is."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def convergence_figure(rounds: list[dict], best_round: int) -> Figure:
    """Loss and AUC per round (training and federated validation), update norms, the exported round."""
    figure = Figure(figsize=(15, 4))
    loss_axis, auc_axis, norm_axis = figure.subplots(1, 3)
    steps = [r["round"] for r in rounds]

    def plot(axis, key: str, label: str) -> None:  # a series an engine or DP leaves unmeasured is left out
        values = [r.get(key, np.nan) for r in rounds]
        if np.any(np.isfinite(values)):
            axis.plot(steps, values, marker=".", label=label)

    for axis, key, title, ylabel in (
        (loss_axis, "loss", "Loss", "weighted binary cross-entropy"),
        (auc_axis, "auc", "ROC AUC", "ROC AUC"),
    ):
        plot(axis, key, "training (sampled institutions)")
        plot(axis, f"validation_{key}", "federated validation")
        axis.axvline(best_round, color="grey", linestyle="--", label=f"exported: round {best_round}")
        axis.set(title=title, xlabel="round", ylabel=ylabel)
        axis.legend()
    plot(norm_axis, "client_update_norm", "mean client update")
    plot(norm_axis, "server_update_norm", "aggregated update")
    norm_axis.set(
        title="Update L2 norm" if norm_axis.lines else "(no model updates: trees)",
        xlabel="round",
        ylabel="L2 norm",
        yscale="log" if norm_axis.lines else "linear",
    )
    if norm_axis.lines:
        norm_axis.legend()
    figure.tight_layout()
    return figure


def importance_figure(gain: dict[str, float], top: int = 20) -> Figure:
    """Gradient-boosted trees: each feature's share of the total gain of the splits on it (top `top`)."""
    ranked = sorted(gain.items(), key=lambda item: item[1])[-top:]
    total = sum(gain.values()) or 1.0
    figure = Figure(figsize=(8, 0.3 * len(ranked) + 1.2))
    axis = figure.subplots()
    axis.barh([name for name, _ in ranked], [value / total for _, value in ranked])
    axis.set(title="Feature importance (share of total gain)", xlabel="share of the trees' total gain")
    figure.tight_layout()
    return figure


def roc_figure(evaluations: list[InstitutionEvaluation]) -> Figure:
    """One panel per institution: ROC curves of every model role it evaluated, AUC in the legend."""
    figure = Figure(figsize=(4.5 * len(evaluations), 4.2))
    axes = np.atleast_1d(figure.subplots(1, len(evaluations)))
    for axis, e in zip(axes, evaluations):
        for role, curves in e.curves.items():
            axis.plot(
                curves["roc"]["fpr"],
                curves["roc"]["tpr"],
                linestyle="-" if role == "challenger" else "--",
                label=f"{ROLE_LABELS.get(role, role)} (AUC {e.metrics[role]['roc_auc']:.3f})",
            )
        axis.plot([0, 1], [0, 1], color="lightgrey", linewidth=1)
        axis.set(
            title=f"{e.institution} ({e.examples} holdout rows)",
            xlabel="false positive rate",
            ylabel="true positive rate",
            xlim=(0, 1),
            ylim=(0, 1),
        )
        axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def calibration_figure(evaluations: list[InstitutionEvaluation]) -> Figure:
    """Observed positive rate against mean predicted probability per bin: every model role pooled
    over institutions (left), and the new model per institution (right)."""
    figure = Figure(figsize=(10, 4.5))
    pooled_axis, institution_axis = figure.subplots(1, 2)

    def plot(axis, bins: dict, label: str, style: str) -> None:
        examples = np.asarray(bins["examples"])
        filled = examples > 0
        predicted = np.asarray(bins["predicted_sum"])[filled] / examples[filled]
        observed = np.asarray(bins["positives"])[filled] / examples[filled]
        axis.plot(predicted, observed, style, marker="o", label=label)

    roles = list(dict.fromkeys(role for e in evaluations for role in e.curves))
    for role in roles:
        plot(
            pooled_axis,
            pooled_calibration(evaluations, role),
            ROLE_LABELS.get(role, role),
            "-" if role == "challenger" else "--",
        )
    for e in evaluations:
        plot(institution_axis, e.curves["challenger"]["calibration"], e.institution, "-")
    for axis, title in ((pooled_axis, "All institutions"), (institution_axis, "New model per institution")):
        axis.plot([0, 1], [0, 1], color="lightgrey", linewidth=1, label="perfect calibration")
        axis.set(
            title=title, xlabel="mean predicted probability", ylabel="observed positive rate", xlim=(0, 1), ylim=(0, 1)
        )
        axis.legend(fontsize="small")
    figure.tight_layout()
    return figure


def stability_figure(reports, warn: float, act: float, top: int = 8) -> Figure:
    """Monitoring: per scope (institution, consortium) the grades' stability index and its `top` features', with
    the look (`warn`) and retrain (`act`) thresholds."""
    figure = Figure(figsize=(5 * len(reports), 0.32 * (top + 1) + 1.6))
    axes = np.atleast_1d(figure.subplots(1, len(reports), sharex=True))
    for axis, report in zip(axes, reports, strict=True):
        ranked = sorted(report.feature_stability.items(), key=lambda item: item[1])[-top:]
        names, values = [name for name, _ in ranked] + ["(grades)"], [v for _, v in ranked] + [report.grade_stability]
        colours = ["#a3171b" if v >= act else "#c77c02" if v >= warn else "#4c72b0" for v in values]
        axis.barh(names, values, color=colours)
        axis.axvline(warn, color="#c77c02", linestyle="--", linewidth=1, label=f"look {warn:g}")
        axis.axvline(act, color="#a3171b", linestyle="--", linewidth=1, label=f"retrain {act:g}")
        axis.set(title=f"{report.scope}: {report.status}", xlabel="stability index (PSI)")
    axes[0].legend(loc="lower right")
    figure.tight_layout()
    return figure


def backtest_figure(reports) -> Figure:
    """Monitoring: per scope with matured outcomes, each grade's observed default rate and its 95 % Jeffreys
    interval, against its PD and the model's mean prediction."""
    from scipy import stats

    tested = [r for r in reports if r.backtest is not None]
    figure = Figure(figsize=(5 * max(1, len(tested)), 3.8))
    axes = np.atleast_1d(figure.subplots(1, max(1, len(tested)), sharey=True))
    for axis, report in zip(axes, tested, strict=False):
        grades = [g for g in report.backtest.grades if g.rows]
        x = np.arange(len(grades))
        low = [stats.beta.ppf(0.025, g.defaults + 0.5, g.rows - g.defaults + 0.5) for g in grades]
        high = [stats.beta.ppf(0.975, g.defaults + 0.5, g.rows - g.defaults + 0.5) for g in grades]
        axis.vlines(x, low, high, color="#4c72b0", alpha=0.5, linewidth=6, label="Jeffreys 95 % interval")
        axis.plot(x, [g.observed_rate for g in grades], "o", color="#4c72b0", label="observed")
        axis.plot(x, [g.pd for g in grades], "s", color="#a3171b", label="PD (development)")
        axis.plot(x, [g.predicted_rate for g in grades], "x", color="grey", label="model's mean prediction")
        axis.set_xticks(x, [g.grade for g in grades])
        axis.set(title=f"{report.scope}: default rate by grade", xlabel="grade", ylabel="default rate")
    if not tested:
        axes[0].set(title="(no matured outcomes: no back-test)")
    else:
        axes[0].legend(loc="upper left")
    figure.tight_layout()
    return figure


def fairness_figure(figures, minimum_ratio: float | None) -> Figure:
    """One protected attribute (fairness.figures.AttributeFigures): each group's approval rate with its 95 %
    interval and its adverse impact ratio (the four-fifths line), and its observed against predicted bad rate."""
    figure = Figure(figsize=(11, 3.6))
    approval_axis, calibration_axis = figure.subplots(1, 2)
    groups = [g for g in figures.groups if g.rows]
    names = [f"{g.group}\n({g.rows:,})" for g in groups]
    rates = np.array([g.approval_rate for g in groups])
    low = rates - np.array([g.approval_interval[0] for g in groups])
    high = np.array([g.approval_interval[1] for g in groups]) - rates
    colours = ["tab:grey" if g.group == figures.reference else "tab:blue" for g in groups]
    approval_axis.bar(names, rates, yerr=[low, high], color=colours, capsize=4)
    for position, g in enumerate(groups):
        approval_axis.annotate(f"AIR {g.adverse_impact_ratio:.2f}", (position, 0.02), ha="center", color="white")
    if minimum_ratio is not None:
        reference = next(g for g in groups if g.group == figures.reference)
        approval_axis.axhline(minimum_ratio * reference.approval_rate, color="tab:red", linestyle="--",
                              label=f"{minimum_ratio:g} x {figures.reference}'s rate")  # fmt: skip
        approval_axis.legend(loc="lower right")
    approval_axis.set(title=f"{figures.attribute}: approval rate (95 % interval)", ylabel="approved", ylim=(0, 1))
    observed = [g.observed_bad_rate for g in groups]
    predicted = [g.predicted_bad_rate for g in groups]
    positions = np.arange(len(groups))
    calibration_axis.bar(positions - 0.2, observed, width=0.4, label="observed bad rate")
    calibration_axis.bar(positions + 0.2, predicted, width=0.4, label="predicted (mean probability)")
    calibration_axis.set_xticks(positions, names)
    calibration_axis.set(title=f"{figures.attribute}: calibration per group", ylabel="bad rate")
    calibration_axis.legend()
    figure.tight_layout()
    return figure


def tuning_figure(trials) -> Figure:
    """Federated tuning: each trial's validation AUC per round (pruned trials end early, dashed) and each finished
    trial's score with the best so far (engines.tuning.Trial)."""
    figure = Figure(figsize=(12, 4))
    rounds_axis, trials_axis = figure.subplots(1, 2)
    for trial in trials:
        seen = [(r["round"], r.get("validation_auc")) for r in trial.rounds if r.get("validation_auc") is not None]
        if seen:
            steps, aucs = zip(*seen, strict=True)
            rounds_axis.plot(steps, aucs, linestyle="--" if trial.state == "pruned" else "-", alpha=0.7)
    rounds_axis.set(title="Federated validation AUC by round (dashed: pruned)", xlabel="round", ylabel="ROC AUC")
    finished = [t for t in trials if t.score is not None]
    if finished:
        numbers, scores = [t.number for t in finished], [t.score for t in finished]
        trials_axis.scatter(numbers, scores, label="trial (finished)")
        trials_axis.step(numbers, np.maximum.accumulate(scores), where="post", color="grey", label="best so far")
    pruned = [t.number for t in trials if t.state == "pruned"]
    if pruned:
        trials_axis.scatter(pruned, [min(s for s in (t.score for t in finished)) if finished else 0.5] * len(pruned),
                            marker="x", color="red", label="pruned")  # fmt: skip
    trials_axis.set(title="Trials", xlabel="trial", ylabel="federated validation AUC")
    trials_axis.legend()
    figure.tight_layout()
    return figure
