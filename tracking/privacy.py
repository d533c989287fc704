"""The privacy budget ledger: what each retraining's differential privacy spends per institution (the plan is
engines.privacy's).

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

from prefect import get_run_logger

from engines.privacy import PrivacyPlan
from errors import FedriskError
from tracking.ledger import LEDGER_EXPERIMENT, read_ledger, spent_totals

RESERVED, SPENT = "reserved", "spent"  # a ledger run's status: planned before training, settled after it


class PrivacyBudgetExceeded(FedriskError, RuntimeError):
    """A retraining would take an institution past its privacy budget; nothing was trained."""


def _ledger_experiment(client) -> str:
    experiment = client.get_experiment_by_name(LEDGER_EXPERIMENT)
    return experiment.experiment_id if experiment else client.create_experiment(LEDGER_EXPERIMENT)


def _log_charge(client, run_id: str, plan: PrivacyPlan) -> None:
    import mlflow.entities

    client.log_batch(
        run_id,
        metrics=[
            mlflow.entities.Metric(f"{kind}.{i.institution}", value, 0, 0)
            for i in plan.institutions
            for kind, value in (("epsilon", i.epsilon), ("delta", i.delta))
        ],
    )


def reserve_privacy_budget(
    tracking_uri: str,
    model_name: str,
    run_key: str,
    flow_run_id: str,
    plan: PrivacyPlan,
    budgets: dict[str, float | None],
) -> str:
    """Refuse the run if its plan would take any institution past its budget; else reserve the plan's
    epsilon in the ledger and return the entry's id.

    The reservation is written first and the totals read after it, so two runs that race for the
    last of a budget both see each other and both are refused rather than both admitted. A
    retraining that resumes (same run key) takes over its own unsettled reservation.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = _ledger_experiment(client)
    own = [
        e
        for e in read_ledger(tracking_uri)
        if e.status == RESERVED and e.model_name == model_name and e.run_key == run_key
    ]
    if own:
        run_id = own[0].run_id
    else:
        run_id = client.create_run(
            experiment_id,
            run_name=f"{model_name} ({flow_run_id[:8]})",
            tags={
                "ledger.model": model_name,
                "ledger.run_key": run_key,
                "ledger.flow_run_id": flow_run_id,
                "ledger.mechanism": plan.mechanism,
                "ledger.status": RESERVED,
            },
        ).info.run_id
    _log_charge(client, run_id, plan)
    entries = read_ledger(tracking_uri)
    over = []
    for i in plan.institutions:
        budget = budgets.get(i.institution)
        spent, _, on = spent_totals([e for e in entries if e.run_id != run_id], i.institution)
        if budget is not None and spent + i.epsilon > budget:
            over.append(
                f"institution '{i.institution}': this run would spend epsilon {i.epsilon:.3f} (delta "
                f"{i.delta:.2g}) on top of {spent:.3f} already spent by {len(on)} earlier retraining(s)"
                f"{' (' + ', '.join(on) + ')' if on else ''}, over its budget of {budget:g}"
            )
    if over:
        client.delete_run(run_id)
        raise PrivacyBudgetExceeded("privacy budget exceeded, nothing was trained or registered: " + "; ".join(over))
    client.set_terminated(run_id, "FINISHED")
    get_run_logger().info(
        "privacy budget reserved (ledger run %s): %s",
        run_id,
        ", ".join(f"{i.institution} epsilon {i.epsilon:.3f}" for i in plan.institutions),
    )
    return run_id


def settle_privacy_budget(tracking_uri: str, ledger_run_id: str, spent: PrivacyPlan) -> None:
    """Replace a reservation by what the rounds actually trained spent (at most the plan)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    _log_charge(client, ledger_run_id, spent)
    client.set_tag(ledger_run_id, "ledger.status", SPENT)


def record_ledger_version(tracking_uri: str, ledger_run_id: str, version: str, model_run_id: str) -> None:
    """Tie a settled charge to the model version (and MLflow run) it produced."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    client.set_tag(ledger_run_id, "ledger.version", version)
    client.set_tag(ledger_run_id, "ledger.model_run_id", model_run_id)
