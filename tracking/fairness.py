"""The fair-lending figures as a version records them: MLflow metrics under `fairness/` (the consortium's, and each
institution's adverse impact ratios), a plot per protected attribute and the card's Fair lending section."""

from __future__ import annotations

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
