"""Privacy stage: what a retraining's differential privacy spends per institution, and the budget ledger.

Before training, `plan_privacy` fixes each institution's noise (from a noise multiplier, or
calibrated to a target epsilon over the planned rounds) and the epsilon that plan would spend.
The ledger, kept in the tracking store beside the registry (MLflow experiment
`fedrisk-privacy-ledger`, one run per retraining), holds what every earlier retraining spent on
each institution; a run whose plan would take an institution past its budget is refused before
anything is trained. Spending composes by addition (epsilons and deltas add up): simple, and
never an understatement.

A reservation is written before training (the planned epsilon) and settled after it (the
epsilon of the rounds actually trained); one that never settles, because its run died, keeps
counting in full: its updates may have left the institutions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from prefect import get_run_logger, task

from tasks.config import PrivacyConfig, TrainingConfig
from tasks.ledger import LEDGER_EXPERIMENT, read_ledger, spent_totals
from tasks.retries import TRANSIENT_RETRIES

RESERVED, SPENT = "reserved", "spent"
MECHANISM_LABELS = {"record_level": "record-level DP-SGD (per customer)",
                    "client_level": "client-level Gaussian (per institution)"}
CLIENT_LEVEL_DELTA = 1e-5


class PrivacyBudgetExceeded(RuntimeError):
    """A retraining would take an institution past its privacy budget; nothing was trained."""


class PrivacyPlanError(ValueError):
    """The privacy settings cannot be met (a target epsilon no noise reaches); nothing was trained."""


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


def _epsilon(mechanism: str, rows: int, batch_size: int, steps: int, rounds: int, noise_multiplier: float,
             delta: float) -> float:
    from fed_models.accounting import client_level_epsilon, record_level_epsilon

    if mechanism == "record_level":
        return record_level_epsilon(rows=rows, batch_size=batch_size, steps=steps, noise_multiplier=noise_multiplier,
                                    delta=delta)
    return client_level_epsilon(rounds=rounds, noise_multiplier=noise_multiplier, delta=delta)


def plan_privacy(privacy: PrivacyConfig, training: TrainingConfig, fit_rows: dict[str, int]) -> PrivacyPlan | None:
    """Each institution's noise multiplier and planned epsilon, assuming it trains in every one of the
    maximum rounds (the most it can spend). `fit_rows` the rows each institution trains on. None when
    the config asks for no privacy.
    """
    from fed_models.accounting import (EpsilonUnreachable, client_level_noise_multiplier, default_delta,
                                    record_level_noise_multiplier, steps_per_round)

    mechanism = privacy.mechanism
    if mechanism == "none":
        return None
    rounds, batch_size = training.rounds, training.batch_size
    institutions = []
    for name, rows in fit_rows.items():
        record = mechanism == "record_level"
        delta = privacy.delta or (default_delta(rows) if record else CLIENT_LEVEL_DELTA)
        steps = steps_per_round(rows, batch_size, training.local_epochs) if record else 1
        noise = privacy.noise_multiplier
        if noise is None:
            try:
                noise = (record_level_noise_multiplier(target_epsilon=privacy.target_epsilon, rows=rows,
                                                       batch_size=batch_size, steps=steps * rounds, delta=delta)
                         if record else client_level_noise_multiplier(target_epsilon=privacy.target_epsilon,
                                                                      rounds=rounds, delta=delta))
            except EpsilonUnreachable as error:
                raise PrivacyPlanError(f"institution '{name}': privacy.target_epsilon: {error}") from None
        institutions.append(InstitutionPrivacy(
            institution=name, rows=rows, noise_multiplier=noise, delta=delta, steps_per_round=steps, rounds=rounds,
            epsilon=_epsilon(mechanism, rows, batch_size, steps * rounds, rounds, noise, delta)))
    return PrivacyPlan(mechanism=mechanism, clip_norm=privacy.clip_norm,
                       adaptive_clipping=privacy.adaptive_clipping, batch_size=batch_size, institutions=institutions)


def spent_privacy(plan: PrivacyPlan, rounds_trained: dict[str, int],
                  charged: dict[str, tuple[float, float]] | None = None) -> PrivacyPlan:
    """The plan with each institution's epsilon for the rounds it actually trained in. Across silos, DP-SGD runs
    at the node, which accounts it at its own delta: `charged` (institution -> its ledger's epsilon and delta)
    is recorded as it is, so the registry and the node's ledger say the same."""
    charged = charged or {}

    def spent(i: InstitutionPrivacy) -> InstitutionPrivacy:
        rounds = rounds_trained.get(i.institution, 0)
        if plan.mechanism == "record_level" and i.institution in charged:
            epsilon, delta = charged[i.institution]
            return replace(i, rounds=rounds, epsilon=epsilon, delta=delta)
        return replace(i, rounds=rounds, epsilon=_epsilon(plan.mechanism, i.rows, plan.batch_size,
                                                          i.steps_per_round * rounds, rounds, i.noise_multiplier,
                                                          i.delta))

    return replace(plan, institutions=[spent(i) for i in plan.institutions])


def _ledger_experiment(client) -> str:
    experiment = client.get_experiment_by_name(LEDGER_EXPERIMENT)
    return experiment.experiment_id if experiment else client.create_experiment(LEDGER_EXPERIMENT)


def _log_charge(client, run_id: str, plan: PrivacyPlan) -> None:
    import mlflow.entities

    client.log_batch(run_id, metrics=[
        mlflow.entities.Metric(f"{kind}.{i.institution}", value, 0, 0)
        for i in plan.institutions for kind, value in (("epsilon", i.epsilon), ("delta", i.delta))])


@task(name="reserve-privacy-budget", **TRANSIENT_RETRIES)
def reserve_privacy_budget(tracking_uri: str, model_name: str, run_key: str, flow_run_id: str, plan: PrivacyPlan,
                           budgets: dict[str, float | None]) -> str:
    """Refuse the run if its plan would take any institution past its budget; else reserve the plan's
    epsilon in the ledger and return the entry's id.

    The reservation is written first and the totals read after it, so two runs that race for the
    last of a budget both see each other and both are refused rather than both admitted. A
    retraining that resumes (same run key) takes over its own unsettled reservation.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = _ledger_experiment(client)
    own = [e for e in read_ledger(tracking_uri)
           if e.status == RESERVED and e.model_name == model_name and e.run_key == run_key]
    if own:
        run_id = own[0].run_id
    else:
        run_id = client.create_run(experiment_id, run_name=f"{model_name} ({flow_run_id[:8]})", tags={
            "ledger.model": model_name, "ledger.run_key": run_key, "ledger.flow_run_id": flow_run_id,
            "ledger.mechanism": plan.mechanism, "ledger.status": RESERVED}).info.run_id
    _log_charge(client, run_id, plan)
    entries = read_ledger(tracking_uri)
    over = []
    for i in plan.institutions:
        budget = budgets.get(i.institution)
        spent, _, on = spent_totals([e for e in entries if e.run_id != run_id], i.institution)
        if budget is not None and spent + i.epsilon > budget:
            over.append(f"institution '{i.institution}': this run would spend epsilon {i.epsilon:.3f} (delta "
                        f"{i.delta:.2g}) on top of {spent:.3f} already spent by {len(on)} earlier retraining(s)"
                        f"{' (' + ', '.join(on) + ')' if on else ''}, over its budget of {budget:g}")
    if over:
        client.delete_run(run_id)
        raise PrivacyBudgetExceeded("privacy budget exceeded, nothing was trained or registered: " + "; ".join(over))
    client.set_terminated(run_id, "FINISHED")
    get_run_logger().info("privacy budget reserved (ledger run %s): %s", run_id, ", ".join(
        f"{i.institution} epsilon {i.epsilon:.3f}" for i in plan.institutions))
    return run_id


@task(name="settle-privacy-budget", **TRANSIENT_RETRIES)
def settle_privacy_budget(tracking_uri: str, ledger_run_id: str, spent: PrivacyPlan) -> None:
    """Replace a reservation by what the rounds actually trained spent (at most the plan)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    _log_charge(client, ledger_run_id, spent)
    client.set_tag(ledger_run_id, "ledger.status", SPENT)


@task(name="record-ledger-version", **TRANSIENT_RETRIES)
def record_ledger_version(tracking_uri: str, ledger_run_id: str, version: str, model_run_id: str) -> None:
    """Tie a settled charge to the model version (and MLflow run) it produced."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    client.set_tag(ledger_run_id, "ledger.version", version)
    client.set_tag(ledger_run_id, "ledger.model_run_id", model_run_id)


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
    tags = {"privacy.mechanism": plan.mechanism, "privacy.epsilon": f"{plan.max_epsilon:.4f}",
            "privacy.clip_norm": f"{plan.clip_norm:g}", "privacy.ledger_run": ledger_run_id or "none"}
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
