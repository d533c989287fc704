"""The promotion policy: whether a challenger replaces the champion, decided from the holdout evaluations alone
(the run config's `promotion` section), with the one-sentence reason and every check made."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fairness.figures import fairness_figures, judged_groups
from institution.evaluation import HIGHER_IS_BETTER, InstitutionEvaluation, pooled_ece, weighted_metrics
from institution.fairness import FairnessCounts
from institution.validation import LEFT_OUT
from runconfig import PromotionConfig
from tracking.versions import CHALLENGER, CHAMPION


@dataclass(frozen=True)
class Decision:
    """Whether the challenger becomes champion, the one-sentence reason, and every check made."""

    promoted: bool
    reason: str
    checks: list[str]


def _gain(metric: str, new: float, old: float) -> float:
    return new - old if HIGHER_IS_BETTER[metric] else old - new


def decide_promotion(
    policy: PromotionConfig,
    evaluations: list[InstitutionEvaluation],
    champion_version: str | None,
    lost: dict[str, str] | None = None,
    protected: dict[str, str] | None = None,
    fairness: dict[str, FairnessCounts] | None = None,
    uncounted: list[str] | None = None,
) -> Decision:
    """Apply the promotion policy (the run config's `promotion` section) to the holdout evaluations. `lost`:
    institutions left out mid-training (the challenger was trained and evaluated without them); `protected`: the
    schema's protected attributes and each one's reference group, `fairness` the consortium's counts by group per
    role (institution.fairness): the fairness guardrails judge them. `uncounted`: institutions none of whose updates
    counted (a deadline or a buffer dropped every one): the challenger learned nothing from their rows.

    Promoted only when the challenger beats the champion on the primary metric (example-weighted
    over institutions) by at least `min_improvement`, no institution loses more than
    `max_institution_drop` on it, and the pooled calibration error is below `max_calibration_error`.
    With no champion yet, the guardrail on calibration alone decides.
    """
    metric = policy.metric
    challenger = weighted_metrics(evaluations, CHALLENGER)[metric]
    checks: list[str] = []
    if policy.max_calibration_error is not None:
        ece, limit = pooled_ece(evaluations, CHALLENGER), policy.max_calibration_error
        checks.append(
            f"{'pass' if ece < limit else 'fail'}: pooled ECE {ece:.4f} "
            f"{'below' if ece < limit else 'not below'} {limit:g}"
        )
    compared = champion_version is not None and all(CHAMPION in e.metrics for e in evaluations)
    if champion_version is None:
        checks.insert(0, f"pass: no champion yet; challenger {metric} {challenger:.4f}")
    elif not compared:
        checks.insert(
            0, f"fail: champion v{champion_version} could not be compared on the same data (its features differ)"
        )
    elif math.isnan(challenger):
        checks.insert(0, f"fail: challenger {metric} is undefined")
    else:
        champion = weighted_metrics(evaluations, CHAMPION)[metric]
        gain, needed = _gain(metric, challenger, champion), policy.min_improvement
        better = gain > 0 and gain >= needed
        checks.insert(
            0,
            f"{'pass' if better else 'fail'}: {metric} {challenger:.4f} vs champion v{champion_version} "
            f"{champion:.4f} on the same holdouts ({gain:+.4f}; needs > 0"
            f"{f' and >= {needed:g}' if needed else ''})",
        )
        if policy.max_institution_drop is not None:
            limit = policy.max_institution_drop
            drops = {
                e.institution: -_gain(metric, e.metrics[CHALLENGER][metric], e.metrics[CHAMPION][metric])
                for e in evaluations
                if not math.isnan(e.metrics[CHALLENGER][metric] - e.metrics[CHAMPION][metric])
            }
            worse = {name: drop for name, drop in drops.items() if drop > limit}
            if worse:
                named = ", ".join(f"{name} worse by {drop:.4f}" for name, drop in worse.items())
                checks.append(
                    f"fail: institutions worse than under the champion by more than {limit:g} on {metric}: {named}"
                )
            else:
                name, drop = max(drops.items(), key=lambda item: item[1], default=(None, 0.0))
                detail = f" (largest drop: {name} {drop:.4f})" if name and drop > 0 else " (none worse)"
                checks.append(
                    f"pass: no institution worse than under the champion by more than {limit:g} on {metric}{detail}"
                )
    checks += _fairness_checks(policy, fairness or {}, champion_version if compared else None, protected or {})
    mid_training = {name: why for name, why in (lost or {}).items() if why.startswith(LEFT_OUT)}
    if mid_training and not policy.promote_with_lost_institutions:
        checks.append(
            f"fail: trained and evaluated without {', '.join(sorted(mid_training))}, lost mid-training "
            f"(promotion.promote_with_lost_institutions is false: a person decides)"
        )
    if uncounted and not policy.promote_with_lost_institutions:
        checks.append(
            f"fail: trained without the rows of {', '.join(sorted(uncounted))}: none of their updates counted (each "
            f"arrived after its round closed and was dropped; promotion.promote_with_lost_institutions is false: "
            f"a person decides)"
        )
    promoted = all(check.startswith("pass") for check in checks)
    if promoted:
        reason = f"promoted: {checks[0].removeprefix('pass: ')}"
    else:
        kept = f"champion v{champion_version} kept" if champion_version else "not promoted, no champion set"
        reason = f"{kept}: " + "; ".join(c.removeprefix("fail: ") for c in checks if c.startswith("fail"))
    return Decision(promoted=promoted, reason=reason, checks=checks)


def _fairness_checks(
    policy: PromotionConfig, fairness: dict[str, FairnessCounts], champion_version: str | None, protected: dict
) -> list[str]:
    """The fair-lending guardrails over the consortium's counts: no judged group's adverse impact ratio below
    `min_adverse_impact_ratio`, nor lower than under the champion by more than `max_adverse_impact_drop`."""
    if not protected or (policy.min_adverse_impact_ratio is None and policy.max_adverse_impact_drop is None):
        return []
    if CHALLENGER not in fairness:
        return [
            "fail: fair lending could not be tested: the consortium's counts by protected group are missing (an "
            "institution sent none, or their secure sum did not complete)"
        ]
    challenger = fairness_figures(fairness[CHALLENGER], protected)
    champion = None
    if champion_version is not None and CHAMPION in fairness:
        champion = {f.attribute: f for f in fairness_figures(fairness[CHAMPION], protected)}
    checks = []
    for figures in challenger:
        judged, small = judged_groups(figures, policy.min_group_rows)
        aside = f"; too few rows to judge: {', '.join(f'{g.group} ({g.rows})' for g in small)}" if small else ""
        reference = figures.group(figures.reference)
        limit = policy.min_adverse_impact_ratio
        if limit is not None:
            low = [g for g in judged if g.adverse_impact_ratio < limit]
            if low:
                named = ", ".join(
                    f"{figures.attribute} {g.group} {g.adverse_impact_ratio:.3f} (approved {g.approved:,} of "
                    f"{g.rows:,}, {g.approval_rate:.1%}, against {figures.reference} {reference.approval_rate:.1%})"
                    for g in low
                )
                checks.append(f"fail: adverse impact ratio below {limit:g}: {named}")
            else:
                lowest = min(judged, key=lambda g: g.adverse_impact_ratio, default=None)
                detail = f" (lowest: {lowest.group} {lowest.adverse_impact_ratio:.3f})" if lowest else ""
                checks.append(
                    f"pass: no {figures.attribute} group's adverse impact ratio below {limit:g} against "
                    f"{figures.reference}{detail}{aside}"
                )
        drop = policy.max_adverse_impact_drop
        if drop is not None and champion is not None:
            before = champion[figures.attribute]
            fallen = [
                (g, before.group(g.group).adverse_impact_ratio - g.adverse_impact_ratio)
                for g in judged
                if g.group in {b.group for b in before.groups}
            ]
            worse = [(g, d) for g, d in fallen if d > drop]
            if worse:
                named = ", ".join(
                    f"{figures.attribute} {g.group} {g.adverse_impact_ratio:.3f} "
                    f"against {g.adverse_impact_ratio + d:.3f}"
                    for g, d in worse
                )
                checks.append(
                    f"fail: adverse impact ratio lower than under champion v{champion_version} by more than "
                    f"{drop:g}: {named}"
                )
            else:
                checks.append(
                    f"pass: no {figures.attribute} group's adverse impact ratio lower than under champion "
                    f"v{champion_version} by more than {drop:g}"
                )
    return checks
