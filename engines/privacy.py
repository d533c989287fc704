"""Differential privacy's plan for one retraining: each institution's noise and the epsilon it will spend (from
its rows, the rounds and the mechanism), what a stopped run spent, and how a plan is described and tagged. The TFF
engine trains with it; tracking.privacy holds each institution's budget to it in the ledger."""

from __future__ import annotations

from dataclasses import dataclass, replace

from errors import ExitCode, FedriskError
from runconfig import PrivacyConfig, TrainingConfig

MECHANISM_LABELS = {
    "record_level": "record-level DP-SGD (per customer)",
    "client_level": "client-level Gaussian (per institution)",
}
CLIENT_LEVEL_DELTA = 1e-5


class PrivacyPlanError(FedriskError, ValueError):
    """The privacy settings cannot be met (a target epsilon no noise reaches); nothing was trained."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class InstitutionPrivacy:
    """One institution's differential privacy in one retraining: its noise, and the epsilon at `delta`."""

    institution: str
    rows: int
    noise_multiplier: float
    delta: float
    steps_per_round: int
    rounds: int
    epsilon: float


@dataclass(frozen=True)
class PrivacyPlan:
    """The privacy of one retraining (planned for its maximum rounds, or spent in the rounds run)."""

    mechanism: str
    clip_norm: float
    adaptive_clipping: bool
    batch_size: int
    institutions: list[InstitutionPrivacy]

    def institution(self, name: str) -> InstitutionPrivacy:
        return next(i for i in self.institutions if i.institution == name)

    @property
    def max_epsilon(self) -> float:
        return max(i.epsilon for i in self.institutions)


def _epsilon(
    mechanism: str, rows: int, batch_size: int, steps: int, rounds: int, noise_multiplier: float, delta: float
) -> float:
    from fed_models.accounting import client_level_epsilon, record_level_epsilon

    if mechanism == "record_level":
        return record_level_epsilon(
            rows=rows, batch_size=batch_size, steps=steps, noise_multiplier=noise_multiplier, delta=delta
        )
    return client_level_epsilon(rounds=rounds, noise_multiplier=noise_multiplier, delta=delta)


def plan_privacy(
    privacy: PrivacyConfig, training: TrainingConfig, fit_rows: dict[str, int], seed: int = 0, share: float = 1.0
) -> PrivacyPlan | None:
    """Each institution's noise multiplier and planned epsilon, assuming it trains in every round it can: each of
    the maximum rounds, or under partial participation each round the seeded sampler (`seed`) picks it for (a
    public schedule: no amplification by sampling is claimed). A buffered schedule restarts an institution as
    soon as it reports, so it is planned for every round. `fit_rows` the rows each institution trains on, in
    the consortium's order. `share`: the part of the target epsilon and of delta this training may spend (one
    tuning trial's: 1 / trials). None when the config asks for no privacy.
    """
    from fed_models.accounting import (
        EpsilonUnreachable,
        client_level_noise_multiplier,
        default_delta,
        record_level_noise_multiplier,
        steps_per_round,
    )
    from fed_models.schedule import rounds_sampled

    mechanism = privacy.mechanism
    if mechanism == "none":
        return None
    batch_size = training.batch_size
    buffered = training.schedule.mode == "buffered"
    sampled = None if buffered else training.sampled(len(fit_rows))
    most = rounds_sampled(len(fit_rows), sampled, seed, training.rounds)
    institutions = []
    for (name, rows), sampled_in in zip(fit_rows.items(), most, strict=True):
        rounds = max(1, sampled_in)  # a plan for no round at all would calibrate nothing
        record = mechanism == "record_level"
        delta = (privacy.delta or (default_delta(rows) if record else CLIENT_LEVEL_DELTA)) * share
        steps = steps_per_round(rows, batch_size, training.local_epochs) if record else 1
        noise = privacy.noise_multiplier
        if noise is None:
            try:
                noise = (
                    record_level_noise_multiplier(
                        target_epsilon=privacy.target_epsilon * share,
                        rows=rows,
                        batch_size=batch_size,
                        steps=steps * rounds,
                        delta=delta,
                    )
                    if record
                    else client_level_noise_multiplier(
                        target_epsilon=privacy.target_epsilon * share, rounds=rounds, delta=delta
                    )
                )
            except EpsilonUnreachable as error:
                raise PrivacyPlanError(f"institution '{name}': privacy.target_epsilon: {error}") from None
        institutions.append(
            InstitutionPrivacy(
                institution=name,
                rows=rows,
                noise_multiplier=noise,
                delta=delta,
                steps_per_round=steps,
                rounds=rounds,
                epsilon=_epsilon(mechanism, rows, batch_size, steps * rounds, rounds, noise, delta),
            )
        )
    return PrivacyPlan(
        mechanism=mechanism,
        clip_norm=privacy.clip_norm,
        adaptive_clipping=privacy.adaptive_clipping,
        batch_size=batch_size,
        institutions=institutions,
    )


def spent_privacy(
    plan: PrivacyPlan, rounds_trained: dict[str, int], charged: dict[str, tuple[float, float]] | None = None
) -> PrivacyPlan:
    """The plan with each institution's epsilon for the rounds it actually trained in. Across silos, DP-SGD runs
    at the node, which accounts it at its own delta: `charged` (institution -> its ledger's epsilon and delta)
    is recorded as it is, so the registry and the node's ledger say the same."""
    charged = charged or {}

    def spent(i: InstitutionPrivacy) -> InstitutionPrivacy:
        rounds = rounds_trained.get(i.institution, 0)
        if plan.mechanism == "record_level" and i.institution in charged:
            epsilon, delta = charged[i.institution]
            return replace(i, rounds=rounds, epsilon=epsilon, delta=delta)
        return replace(
            i,
            rounds=rounds,
            epsilon=_epsilon(
                plan.mechanism, i.rows, plan.batch_size, i.steps_per_round * rounds, rounds, i.noise_multiplier, i.delta
            ),
        )

    return replace(plan, institutions=[spent(i) for i in plan.institutions])


def composed(plans: list[PrivacyPlan]) -> PrivacyPlan:
    """What several trainings on the same rows spent together (a tuning study's trials): each institution's epsilons
    and deltas added (basic composition, a bound), its rounds added, its smallest noise multiplier."""
    first = plans[0]

    def total(i: InstitutionPrivacy) -> InstitutionPrivacy:
        each = [p.institution(i.institution) for p in plans]
        return replace(
            i,
            rounds=sum(e.rounds for e in each),
            epsilon=sum(e.epsilon for e in each),
            delta=sum(e.delta for e in each),
            noise_multiplier=min(e.noise_multiplier for e in each),
        )

    return replace(first, institutions=[total(i) for i in first.institutions])


def privacy_sentence(plan: PrivacyPlan | None) -> str:
    """What this retraining spent, in one sentence, for the CLI and the Prefect summary."""
    if plan is None:
        return "Privacy: no differential privacy (how much the model reveals about a customer is not bounded)"
    spent = ", ".join(f"{i.institution} {i.epsilon:.3f} (delta {i.delta:.2g})" for i in plan.institutions)
    return f"Privacy: {MECHANISM_LABELS[plan.mechanism]}, clip {plan.clip_norm:g}; epsilon spent: {spent}"


def privacy_tags(plan: PrivacyPlan | None, ledger_run_id: str | None = None) -> dict[str, str]:
    """Tags for the MLflow run and model version: the mechanism, each institution's epsilon and noise,
    and the ledger entry that charged them."""
    if plan is None:
        return {"privacy.mechanism": "none", "privacy.epsilon": "none (no differential privacy)"}
    tags = {
        "privacy.mechanism": plan.mechanism,
        "privacy.epsilon": f"{plan.max_epsilon:.4f}",
        "privacy.clip_norm": f"{plan.clip_norm:g}",
        "privacy.ledger_run": ledger_run_id or "none",
    }
    for i in plan.institutions:
        tags[f"privacy.epsilon.{i.institution}"] = f"{i.epsilon:.4f}"
        tags[f"privacy.delta.{i.institution}"] = f"{i.delta:.3g}"
        tags[f"privacy.noise_multiplier.{i.institution}"] = f"{i.noise_multiplier:.4f}"
    return tags


def membership_advantage(member_losses, nonmember_losses) -> float:
    """The advantage of a loss-threshold membership-inference attack (Yeom et al. 2018): the best, over
    thresholds, of (rows guessed members among members) - (among non-members), guessing "member"
    when a row's loss is below the threshold. 0 = the model tells nothing; 1 = it gives every member away.
    Simulation only: it needs known members (training rows) and non-members.
    """
    import numpy as np
    from sklearn.metrics import roc_curve

    losses = np.concatenate([np.asarray(member_losses, float), np.asarray(nonmember_losses, float)])
    is_member = np.concatenate([np.ones(len(member_losses)), np.zeros(len(nonmember_losses))])
    fpr, tpr, _ = roc_curve(is_member, -losses)
    return float(np.max(tpr - fpr))
