"""The model card: one self-contained HTML page per registered version, for a reviewer or regulator.

Everything on it is an aggregate (metrics, counts, curves at fixed thresholds, extract profiles);
no customer row is read here.
"""

from __future__ import annotations

import base64
import html
import math
import re

from contract.schema import Schema, percent
from engines.registry import engine_for
from fairness.figures import AttributeFigures
from institution.evaluation import METRIC_LABELS, ROLE_LABELS, InstitutionEvaluation, weighted_metrics
from institution.validation import ValidationReport
from riskmodel.layout import Layout
from runconfig import EvaluationConfig, RunConfig, ScorecardConfig
from tracking.fairness import consortium_fairness, consortium_proxies, institution_fairness
from tracking.lineage import participation_summary
from tracking.promotion import Decision

PROFILE_FEATURES = 4  # numeric features whose mean per institution the data table shows
# Long names, digests and paths break rather than widen the page; a table wider than the page scrolls by itself.
STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.5em 0 1.5em;display:block;max-width:100%;overflow-x:auto}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.pass{color:#176b2c}.fail{color:#a3171b}img{max-width:100%}
.muted{color:#666}"""


MONITORING_SECTION = re.compile(r"<section id=monitoring>.*?</section>", re.S)


def monitoring_section(latest: tuple[str, str, list[str], str] | None) -> str:
    """The card's monitoring status: none yet, or the latest (status, period, findings, report link); rewritten
    on the stored card after each monitoring (`with_monitoring`)."""
    if latest is None:
        body = "<p class=muted>Not monitored yet (fedrisk monitor).</p>"
    else:
        status, period, findings, link = latest
        shown = "".join(f"<li>{html.escape(f)}</li>" for f in findings[:10])
        more = f"<li class=muted>and {len(findings) - 10} more</li>" if len(findings) > 10 else ""
        body = (
            f"<p>Latest, {html.escape(period)}: <b class={'fail' if status == 'act' else 'pass'}>"
            f"{html.escape(status)}</b>. <a href='{html.escape(link)}'>The report</a></p>"
            + (f"<ul>{shown}{more}</ul>" if findings else "")
        )
    return f"<section id=monitoring><h2>Monitoring</h2>{body}</section>"


def with_monitoring(card: str, latest: tuple[str, str, list[str], str]) -> str:
    """A stored card with its monitoring section replaced by the latest status (added to a card made before)."""
    section = monitoring_section(latest)
    if MONITORING_SECTION.search(card):
        return MONITORING_SECTION.sub(lambda _: section, card, count=1)
    return card.replace("<h2>Promotion decision</h2>", section + "\n<h2>Promotion decision</h2>", 1)


def _png(image: bytes) -> str:
    return base64.b64encode(image).decode()


def _number(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics_table(evaluations: list[InstitutionEvaluation], evaluation: EvaluationConfig) -> str:
    names = list(METRIC_LABELS)
    settings = {
        "recall_at_fpr": f" {evaluation.max_false_positive_rate:g}",
        "recall_at_alert_rate": f" {evaluation.alert_rate:g}",
    }
    header = [
        "institution",
        "model",
        *[METRIC_LABELS[n] + settings.get(n, "") for n in names],
        f"TP / FP / TN / FN at {evaluation.threshold:g}",
    ]
    rows = []
    for e in evaluations:
        for role, metrics in e.metrics.items():
            c = e.confusion.get(role, {})
            counts = " / ".join(str(c.get(k, "")) for k in ("tp", "fp", "tn", "fn"))
            rows.append(
                [
                    html.escape(e.institution),
                    html.escape(ROLE_LABELS.get(role, role)),
                    *[_number(metrics[n]) for n in names],
                    counts,
                ]
            )
    roles = list(dict.fromkeys(role for e in evaluations for role in e.metrics))
    for role in roles:
        w = weighted_metrics(evaluations, role)
        rows.append(["<b>weighted</b>", html.escape(ROLE_LABELS.get(role, role)), *[_number(w[n]) for n in names], ""])
    return _table(header, rows)


def _data_table(
    validation: list[ValidationReport],
    evaluations: list[InstitutionEvaluation],
    examples: dict[str, int],
    schema: Schema,
) -> str:
    held = {e.institution: e for e in evaluations}
    shown = schema.numeric()[:PROFILE_FEATURES]
    header = [
        "institution",
        "status",
        "extract rows",
        "checks (failed)",
        "training rows (fit)",
        "holdout rows",
        f"holdout {schema.label.meaning} rate",
        *[f"mean {f}" for f in shown],
        "extract digest",
        "reasons",
    ]
    rows = []
    for r in validation:
        e = held.get(r.institution)
        profile = (r.profile or {}).get("features", {})
        status = '<span class="pass">admitted</span>' if r.passed else '<span class="fail">quarantined</span>'
        rows.append(
            [
                html.escape(r.institution),
                status,
                str(r.rows),
                f"{r.checks_evaluated} ({r.checks_failed})",
                str(examples.get(r.institution, "-")),
                str(e.examples) if e else "-",
                _number(e.positives / e.examples, 3) if e and e.examples else "-",
                *[_number(profile[f]["mean"], 1) if "mean" in profile.get(f, {}) else "-" for f in shown],
                f"<code>{html.escape((r.digest or '-')[:16])}</code>",
                html.escape("; ".join(r.reasons)),
            ]
        )
    return _table(header, rows)


PRIVACY_SCOPE = (
    "The guarantee covers the model updates each institution sent during training, and so the model: "
    "everything learned from its training rows. Not covered, and released as exact aggregates: the "
    "standardization statistics (row counts, feature sums and sums of squares), the federated validation "
    "loss and AUC (rows never trained on, used to pick the exported round) and the holdout metrics below."
)


def _privacy_section(privacy) -> str:
    e = html.escape
    if privacy is None:
        return (
            "<p><b>No differential privacy.</b> Customer rows never left their institutions, but how much the "
            "model reveals about any one customer is not bounded.</p>"
        )
    if privacy.mechanism == "record_level":
        what = (
            f"Record-level differential privacy: every institution trained with DP-SGD. Each local step "
            f"samples its rows at rate batch / rows ({privacy.batch_size} expected per step), clips each "
            f"example's gradient to L2 norm {privacy.clip_norm:g} and adds Gaussian noise of stddev noise "
            f"multiplier &times; {privacy.clip_norm:g} to their sum. (epsilon, delta) protects any one customer "
            f"of an institution (added or removed), by Renyi DP accounting (dp_accounting) over every step it "
            f"trained."
        )
    else:
        what = (
            f"Client-level differential privacy: each institution's update was clipped to L2 norm "
            f"{privacy.clip_norm:g}{' (adaptively)' if privacy.adaptive_clipping else ''} and Gaussian noise "
            f"added to their sum. (epsilon, delta) protects an institution as a whole, over the rounds it "
            f"trained in."
        )
    rows = [
        [
            e(i.institution),
            str(i.rows),
            f"{i.noise_multiplier:.4f}",
            str(i.steps_per_round * i.rounds),
            str(i.rounds),
            f"<b>{i.epsilon:.4f}</b>",
            f"{i.delta:.3g}",
        ]
        for i in privacy.institutions
    ]
    return (
        f"<p>{what}</p>"
        + _table(["institution", "training rows", "noise multiplier", "DP steps", "rounds", "epsilon", "delta"], rows)
        + f"<p class='muted'>{PRIVACY_SCOPE}</p>"
    )


def _feature_table(schema: Schema, layout: Layout) -> str:
    """The model's inputs as the schema declares them, with what the model makes of each."""
    e = html.escape
    rows = []
    for f in layout.features:
        declared = schema.features[f.name]
        if f.kind == "categorical":
            detail = f"{len(f.levels)} levels kept: {', '.join(f.levels)}; others and unseen levels: (other)"
        elif declared.type == "numeric":
            bounds = (
                ""
                if declared.min is None and declared.max is None
                else (
                    f"{'-inf' if declared.min is None else f'{declared.min:g}'} to "
                    f"{'inf' if declared.max is None else f'{declared.max:g}'}"
                )
            )
            codes = f"codes {', '.join(f'{v:g}' for v in declared.allowed)}" if declared.allowed else ""
            detail = "; ".join(filter(None, [declared.dtype, bounds, codes]))
        else:
            detail = "true / false"
        missing = (
            f"allowed up to {percent(declared.missing.max_rate)}: "
            + ("own level" if f.kind == "categorical" else f"filled with {f.fill:.4g}, indicator added")
            if declared.missing
            else "not allowed"
        )
        unit = getattr(declared, "unit", None) or ""
        rows.append(
            [
                f"<code>{e(f.name)}</code>",
                e(declared.type),
                e(detail),
                e(unit),
                e(missing),
                e(declared.description or ""),
            ]
        )
    return _table(["feature", "type", "values", "unit", "missing values", "description"], rows)


def _points(value: float) -> str:
    """Points to two decimals; a value that rounds to zero is 0.00, never -0.00."""
    return f"{round(float(value), 2) + 0.0:.2f}"


def _policy(promotion) -> str:
    """The promotion policy in words a reader scans: `metric roc_auc, min improvement 0, ...` (unset: none)."""
    return ", ".join(
        f"{key.replace('_', ' ')} {'none' if value is None else value}" for key, value in promotion.model_dump().items()
    )


def _points_table(scorecard, scaling: ScorecardConfig) -> str:
    rows = [[html.escape(r.feature), html.escape(r.attribute), _points(r.points)] for r in scorecard.itertuples()]
    return (
        f"<p>Score = base points + the points of each feature; {scaling.points_to_double_odds:g} points double "
        f"the odds of good to bad, {scaling.base_score:g} points mean odds of {scaling.base_odds:g} to 1. Reason "
        f"codes (<code>fedrisk score --reasons N</code>) name the features that cost an applicant the most points "
        f"against the consortium's average applicant.</p>" + _table(["feature", "attribute", "points"], rows)
    )


def _interval(low: float, high: float, digits: int = 3) -> str:
    return f"[{low:.{digits}f}, {high:.{digits}f}]" if math.isfinite(low) and math.isfinite(high) else ""


def _ratio(figures: AttributeFigures, group: str) -> str:
    """One institution's adverse impact ratio of `group` ("-" where it has none of the group)."""
    return (
        _number(figures.group(group).adverse_impact_ratio, 3) if any(g.group == group for g in figures.groups) else "-"
    )


def _fairness_section(
    consortium: list[AttributeFigures] | None,
    institutions: dict[str, list[AttributeFigures]],
    cutoff: float,
    images: dict[str, str],
    why_not: str = "",
    proxies: dict[str, dict[str, float]] | None = None,
) -> str:
    """The card's Fair lending section: per protected attribute a table of its groups over the consortium, each
    institution's adverse impact ratios, and the attribute's plot (`images`: attribute -> base64 PNG)."""
    e = html.escape
    if consortium is None:
        return f"<section id=fairness><h2>Fair lending</h2><p class='muted'>{e(why_not)}</p></section>"
    parts = [
        "<section id=fairness><h2>Fair lending</h2>",
        f"<p>At the decision: approved when the probability is below {cutoff:g}. Over every institution's holdout "
        f"(their counts by protected group summed: the pooled rows' figures), with 95 % intervals. Protected "
        f"attributes are never model inputs.</p>",
    ]
    header = [
        "group", "rows", "approved", "approval rate", "adverse impact ratio", "approval among goods",
        "std. mean difference", "AUC", "bad rate observed / predicted",
    ]  # fmt: skip
    for attribute in consortium:
        rows = [
            [
                e(g.group) + (" (reference)" if g.group == attribute.reference else ""),
                f"{g.rows:,}",
                f"{g.approved:,}",
                f"{_number(g.approval_rate, 3)} {_interval(*g.approval_interval)}",
                f"{_number(g.adverse_impact_ratio, 3)} {_interval(*g.adverse_impact_interval)}",
                f"{_number(g.equal_opportunity, 3)} {_interval(*g.equal_opportunity_interval)}",
                _number(g.standardized_mean_difference, 3),
                f"{_number(g.auc, 3)} {_interval(*g.auc_interval)}",
                f"{_number(g.observed_bad_rate, 3)} / {_number(g.predicted_bad_rate, 3)}",
            ]
            for g in attribute.groups
        ]
        parts.append(f"<h3>{e(attribute.attribute)}</h3>")
        parts.append(_table(header, rows))
        others = [g.group for g in attribute.groups if g.group != attribute.reference]
        if institutions and others:
            per = [
                [e(name), *[_ratio(f, group) for group in others]]
                for name, figures in institutions.items()
                for f in figures
                if f.attribute == attribute.attribute
            ]
            parts.append(f"<p class='muted'>Adverse impact ratio against {e(attribute.reference)} per institution</p>")
            parts.append(_table(["institution", *others], per))
        strongest = list((proxies or {}).get(attribute.attribute, {}).items())[:5]
        if strongest:
            named = ", ".join(f"{e(feature)} {value:.3f}" for feature, value in strongest)
            parts.append(
                f"<p>Strongest proxies of {e(attribute.attribute)} among the model's features (Cramér's V over every "
                f"institution's development rows; 0 none, 1 the feature tells the group): {named}</p>"
            )
        if attribute.attribute in images:
            image = images[attribute.attribute]
            parts.append(f'<img alt="fairness {e(attribute.attribute)}" src="data:image/png;base64,{image}">')
    parts.append("</section>")
    return "\n".join(parts)


def _fairness(
    config: RunConfig, evaluations: list[InstitutionEvaluation], figures: dict[str, bytes], fairness: dict
) -> str:
    """The Fair lending section: the new model's figures over the consortium (`fairness`: the summed counts per
    role) and each institution's ratios where they came in the clear."""
    protected = config.data_schema.protected_references
    images = {name: _png(figures[f"fairness_{name}"]) for name in protected if f"fairness_{name}" in figures}
    return _fairness_section(
        consortium_fairness(fairness, protected),
        institution_fairness(evaluations, protected),
        config.evaluation.threshold,
        images,
        "The consortium's counts by protected group are missing (an institution sent none, or their secure sum did "
        "not complete): the fair-lending figures of this version are unknown.",
        consortium_proxies(fairness),
    )


def model_card_html(
    *,
    model_name: str,
    version: str,
    run_id: str,
    config: RunConfig,
    decision: Decision,
    lineage: dict[str, str],
    validation: list[ValidationReport],
    evaluations: list[InstitutionEvaluation],
    training,
    figures: dict[str, bytes],
    layout: Layout,
    privacy=None,
    scorecard=None,
    fairness: dict | None = None,
) -> str:
    """The card of `model_name` version `version`: intended use, decision, metrics, plots, privacy, features,
    data, lineage. `figures` are the run's plots as PNGs (tracking.plots.png); `training` is the TrainingOutcome;
    `privacy` what differential privacy spent (a tracking.privacy.PrivacyPlan), or None; `scorecard` a logistic
    regression's points table; `fairness` the consortium's counts by protected group per role."""
    e = html.escape
    schema = config.data_schema
    simulated = any(role in ev.metrics for ev in evaluations for role in ("local_only", "pooled"))
    checks = "".join(f'<li class="{c.split(":")[0]}">{e(c)}</li>' for c in decision.checks)
    described = engine_for(config.training).architecture(config)
    architecture, algorithm, aggregation = described.model, described.algorithm, described.aggregation
    sections = [
        f"<h1>Model card: {e(model_name)} version {e(version)}</h1>",
        f'<p class="muted">MLflow run <code>{e(run_id)}</code> &middot; Prefect flow run '
        f"<code>{e(lineage.get('prefect.flow_run_id', '-'))}</code> &middot; code <code>"
        f"{e(lineage.get('git.commit', '-'))}</code>"
        f"{' (uncommitted changes)' if lineage.get('git.dirty') == 'true' else ''}</p>",
        "<h2>Intended use</h2>",
        f"<p>{e(config.use)}</p>",
        f"<p class='muted'>Output <code>{e(schema.output)}</code>: the probability of {e(schema.label.meaning)} "
        f"(label <code>{e(schema.label.column)}</code> = {e(str(schema.label.positive))}). Schema "
        f"<code>{e(schema.name)}</code> version {schema.version}.</p>",
        monitoring_section(None),
        "<h2>Promotion decision</h2>",
        f"<p><b>{'Promoted to champion' if decision.promoted else 'Not promoted'}</b>: {e(decision.reason)}</p>",
        f"<ul>{checks}</ul>",
        f"<p class='muted'>Policy: {e(_policy(config.promotion))}</p>",
        "<h2>Model and training</h2>",
        f"<p>{e(architecture)} trained with {e(algorithm)} over {len(training.rounds)} rounds "
        f"({'stopped early' if training.stopped_early else 'maximum rounds reached'}); exported round "
        f"{training.best_round} (best federated validation loss). Aggregation: {e(aggregation)}. "
        f"Privacy: {e(lineage.get('privacy.mechanism', 'none'))}. Execution: {e(lineage.get('execution', '-'))}."
        + (
            f" Secure aggregation: the coordinator saw only sums of the "
            f"{e(lineage['secure_aggregation.institutions'])} "
            f"institutions' updates and statistics (threshold {e(lineage['secure_aggregation.threshold'])}, "
            f"{e(lineage['secure_aggregation.bit_width'])}-bit updates clipped to L2 "
            f"{e(lineage['secure_aggregation.clip_norm'])} at each node)."
            if lineage.get("secure_aggregation") == "true"
            else ""
        )
        + "</p>",
        *(
            [
                f"<p>Rounds: {e(lineage['training.schedule'])}.</p><ul>"
                + "".join(f"<li>{e(name)}: {e(participation_summary(rounds))}</li>" for name, rounds in participation)
                + "</ul>"
            ]
            if (participation := list(getattr(training, "participation", {}).items()))
            and "training.schedule" in lineage
            else []
        ),
        *(
            [
                "<p class='fail'>Left out during training: "
                + "; ".join(f"{e(name)} ({e(why)})" for name, why in training.lost.items())
                + "</p>"
            ]
            if training.lost
            else []
        ),
        f'<img alt="convergence" src="data:image/png;base64,{_png(figures["convergence"])}">',
        *(
            [
                f"<h3>Tuning</h3><p>These settings won a federated tuning study: {e(lineage['tuning.trials'])} "
                f"trials; the best, trial {e(lineage['tuning.best_trial'])}, reached federated validation AUC "
                f"{e(lineage['tuning.best_validation_auc'][:6])}. Searched: {e(lineage['tuning.space'])}. Method: "
                f"{e(lineage['tuning.method'])}.</p>",
                f'<img alt="tuning" src="data:image/png;base64,{_png(figures["tuning"])}">',
            ]
            if "tuning.trials" in lineage and "tuning" in figures
            else []
        ),
        "<h2>Features</h2>",
        _feature_table(schema, layout),
        *(
            [
                f'<h3>Feature importance</h3><img alt="feature importance" '
                f'src="data:image/png;base64,{_png(figures["feature_importance"])}">'
            ]
            if "feature_importance" in figures
            else []
        ),
        *(["<h2>Scorecard points</h2>", _points_table(scorecard, config.scorecard)] if scorecard is not None else []),
        "<h2>Privacy</h2>",
        _privacy_section(privacy),
        "<h2>Holdout metrics per institution</h2>",
        "<p>Each institution scores every model on its own held-out rows; only these figures leave it."
        + (
            " Local-only and pooled-data models are <b>simulation-mode baselines</b>: they exist only because this "
            "run could read every institution's rows, and show what federation buys each member."
            if simulated
            else ""
        )
        + "</p>",
        _metrics_table(evaluations, config.evaluation),
        "<h3>ROC curve per institution</h3>",
        f'<img alt="roc" src="data:image/png;base64,{_png(figures["roc"])}">',
        "<h3>Calibration</h3>",
        f'<img alt="calibration" src="data:image/png;base64,{_png(figures["calibration"])}">',
        *([_fairness(config, evaluations, figures, fairness or {})] if schema.protected else []),
        "<h2>Data per institution</h2>",
        f"<p>Checked against suite <code>{e(lineage.get('suite.name', '-'))}</code> (sha256 "
        f"<code>{e(lineage.get('suite.sha256', '-')[:16])}</code>). Aggregates only.</p>",
        _data_table(validation, evaluations, training.examples, schema),
        "<h2>Lineage</h2>",
        _table(["tag", "value"], [[f"<code>{e(k)}</code>", e(v)] for k, v in sorted(lineage.items())]),
    ]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(model_name)} v{e(version)}</title>"
        f"<style>{STYLE}</style></head><body>" + "\n".join(sections) + "</body></html>\n"
    )
