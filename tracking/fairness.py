"""The fair-lending figures as a version records them: MLflow metrics under `fairness/` (the consortium's, and each
institution's adverse impact ratios), a plot per protected attribute and the card's Fair lending section."""

from __future__ import annotations

import html
import math

from fairness.figures import AttributeFigures, fairness_figures, proxy_strengths
from institution.evaluation import InstitutionEvaluation
from institution.fairness import FairnessCounts, add_fairness

CHALLENGER = "challenger"
FAIRNESS_ARTIFACT = "fairness/figures.json"  # the new model's figures over the consortium, in the version's run


def summed_fairness(evaluations: list[InstitutionEvaluation]) -> dict[str, FairnessCounts]:
    """The consortium's counts by protected group per role (challenger, champion): the institutions' summed, for a
    role every institution sent (in the clear; under secure aggregation the flow sums them securely instead)."""
    roles = ("challenger", "champion")
    return {
        role: add_fairness([e.fairness[role] for e in evaluations])
        for role in roles
        if evaluations and all(role in e.fairness for e in evaluations)
    }


def consortium_fairness(
    fairness: dict[str, FairnessCounts], protected: dict[str, str]
) -> list[AttributeFigures] | None:
    """The new model's figures over every institution's holdout; None without its summed counts."""
    if not protected or CHALLENGER not in fairness:
        return None
    return fairness_figures(fairness[CHALLENGER], protected)


def consortium_proxies(fairness: dict[str, FairnessCounts]) -> dict[str, dict[str, float]]:
    """Each model feature's association with each protected attribute over every institution's development rows
    (Cramér's V, strongest first); empty without them."""
    counts = fairness.get(CHALLENGER)
    return proxy_strengths(counts) if counts is not None and counts.proxies else {}


def institution_fairness(
    evaluations: list[InstitutionEvaluation], protected: dict[str, str]
) -> dict[str, list[AttributeFigures]]:
    return {
        e.institution: fairness_figures(e.fairness[CHALLENGER], protected)
        for e in evaluations
        if CHALLENGER in e.fairness
    }


def _finite(value: float) -> bool:
    return value is not None and math.isfinite(value)


def fairness_metrics(
    consortium: list[AttributeFigures],
    institutions: dict[str, list[AttributeFigures]],
    proxies: dict[str, dict[str, float]] | None = None,
) -> dict[str, float]:
    """`fairness/ATTRIBUTE/GROUP/FIGURE` for the consortium, `fairness/INSTITUTION/ATTRIBUTE/GROUP/...` for each
    institution's approval rate and adverse impact ratio (undefined figures left out), and
    `fairness/proxy/ATTRIBUTE/FEATURE`: each feature's association with the attribute."""
    metrics = {
        f"fairness/proxy/{attribute}/{feature}": value
        for attribute, features in (proxies or {}).items()
        for feature, value in features.items()
    }
    for attribute in consortium:
        for g in attribute.groups:
            prefix = f"fairness/{attribute.attribute}/{g.group}"
            for name, value in (
                ("rows", float(g.rows)),
                ("approval_rate", g.approval_rate),
                ("adverse_impact_ratio", g.adverse_impact_ratio),
                ("equal_opportunity", g.equal_opportunity),
                ("standardized_mean_difference", g.standardized_mean_difference),
                ("auc", g.auc),
                ("observed_bad_rate", g.observed_bad_rate),
                ("predicted_bad_rate", g.predicted_bad_rate),
            ):
                if _finite(value):
                    metrics[f"{prefix}/{name}"] = float(value)
    for institution, figures in institutions.items():
        for attribute in figures:
            for g in attribute.groups:
                prefix = f"fairness/{institution}/{attribute.attribute}/{g.group}"
                for name, value in (
                    ("approval_rate", g.approval_rate),
                    ("adverse_impact_ratio", g.adverse_impact_ratio),
                ):
                    if _finite(value):
                        metrics[f"{prefix}/{name}"] = float(value)
    return metrics


def _interval(low: float, high: float, digits: int = 3) -> str:
    return f"[{low:.{digits}f}, {high:.{digits}f}]" if _finite(low) and _finite(high) else ""


def _ratio(figures: AttributeFigures, group: str) -> str:
    """One institution's adverse impact ratio of `group` ("-" where it has none of the group)."""
    return _value(figures.group(group).adverse_impact_ratio) if any(g.group == group for g in figures.groups) else "-"


def _value(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _finite(value) else "-"


def fairness_section(
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
                f"{_value(g.approval_rate)} {_interval(*g.approval_interval)}",
                f"{_value(g.adverse_impact_ratio)} {_interval(*g.adverse_impact_interval)}",
                f"{_value(g.equal_opportunity)} {_interval(*g.equal_opportunity_interval)}",
                _value(g.standardized_mean_difference),
                f"{_value(g.auc)} {_interval(*g.auc_interval)}",
                f"{_value(g.observed_bad_rate)} / {_value(g.predicted_bad_rate)}",
            ]
            for g in attribute.groups
        ]
        parts.append(f"<h3>{e(attribute.attribute)}</h3>")
        parts.append(
            "<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
            + "</table>"
        )  # fmt: skip
        others = [g.group for g in attribute.groups if g.group != attribute.reference]
        if institutions and others:
            per = [
                [e(name), *[_ratio(f, group) for group in others]]
                for name, figures in institutions.items()
                for f in figures
                if f.attribute == attribute.attribute
            ]
            parts.append(f"<p class='muted'>Adverse impact ratio against {e(attribute.reference)} per institution</p>")
            parts.append(
                "<table><tr><th>institution</th>" + "".join(f"<th>{e(g)}</th>" for g in others) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in per)
                + "</table>"
            )  # fmt: skip
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
