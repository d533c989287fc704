"""The training stage's Prefect tasks: the run's engine (engines.registry) over the consortium, with each round
logged, shown as progress and passed to the CLI's listeners; the simulation baselines; retry policy."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled

from consortium.protocol import TrainingStopped
from contract.data import Extract, Split, load_parts
from contract.schema import Schema
from engines.base import TrainingOutcome
from engines.privacy import PrivacyPlan
from engines.registry import engine_for
from engines.tuning import TrialPruned
from hostguard import loopback
from hostguard.loopback import Isolation
from institution.statistics import FeatureSpace, feature_space, local_statistics
from riskmodel.scaling import Scaling
from runconfig import BaselinesConfig, TrainingConfig
from tasks.reporting import artifact_key
from tracking.lineage import uncounted

_round_listeners: list[Callable[[dict], None]] = []
ROUND_RECORD = "fedrisk_round"  # set on a round's log record: a terminal's progress bar shows the same figures


def _worth_retrying(task, task_run, state) -> bool:
    """A crash is retried (it resumes from the checkpoint); a stop the quorum rules decided is not, nor an
    institution's refusal (its policy answers the same again), nor an error that says it must not be
    (`retryable = False`: a lost retraining lock)."""
    error = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return (
        not isinstance(error, TrainingStopped)
        and not getattr(error, "refusal", False)
        and getattr(error, "retryable", True)
    )


def worker_isolation(allow_exposed: bool) -> Isolation:
    """How this run keeps TFF's worker off the network, decided before anything is read or trained:
    WorkerExposureRefused when it cannot be kept on loopback and the operator has not accepted that."""
    return loopback.isolation(allow_exposed, "TFF worker")


@contextmanager
def round_listener(callback: Callable[[dict], None]) -> Iterator[None]:
    """Call `callback(event)` as federated training runs in this process (the CLI's progress bar): `event`
    is {"event": "start"}, then {"event": "round", **round metrics} per round, then {"event": "end"}, each
    with "max_rounds"."""
    _round_listeners.append(callback)
    try:
        yield
    finally:
        _round_listeners.remove(callback)


def _describe(m: dict, max_rounds: int) -> str:
    """One round as logged; a figure the engine or differential privacy leaves unmeasured is left out."""
    nan = float("nan")
    train = "" if math.isnan(m.get("loss", nan)) else f"train loss {m['loss']:.4f}, "
    norm = "" if math.isnan(m.get("client_update_norm", nan)) else f", mean update norm {m['client_update_norm']:.4g}"
    members = f", {m['institutions']} institutions" if "institutions" in m else ""
    text = (
        f"round {m['round']}/{max_rounds}: {train}validation loss {m['validation_loss']:.4f}, validation AUC "
        f"{m['validation_auc']:.4f}{members}{norm}"
    )
    if m.get("non_finite_updates"):
        text += f", {m['non_finite_updates']} non-finite update(s) dropped"
    if m.get("missed_deadline"):
        text += f", {m['missed_deadline']} missed the deadline"
    if m.get("late_applied"):
        text += f", {m['late_applied']} late update(s) applied (mean staleness {m['staleness']:.1f})"
    if m.get("late_dropped"):
        text += f", {m['late_dropped']} late update(s) dropped"
    return text


# Retried once: a crash mid-training (a lost TFF worker, a full disk) resumes from the last
# round's checkpoint instead of starting over. A TrainingStopped is a decision, not retried.
@task(
    name="train-federated",
    task_run_name="train-federated",
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=_worth_retrying,
    cache_policy=NO_CACHE,
)
def train_federated(
    model_name: str,
    consortium,
    space: FeatureSpace,
    training: TrainingConfig,
    positive_weight: float,
    model_dir: Path,
    checkpoint_dir: Path,
    privacy: PrivacyPlan | None = None,
    isolation: Isolation | None = None,
    scaling: Scaling | None = None,
    run_key: str = "",
    lock_check: Callable[[str], None] | None = None,
    after_round: Callable[[dict], None] | None = None,
) -> TrainingOutcome:
    """The run's engine training `model_name` over the consortium, with each round logged, shown in a Prefect
    progress artifact (keyed by the model) and passed to the round listeners (the CLI's progress bar).
    `lock_check(where)` runs after each round: it raises to stop the training when the retraining's lock was lost;
    then `after_round(metrics)`, which may raise a TrainingStopped to end it; a tuning trial's pruning (TrialPruned)
    ends it Cancelled, the state returned with the pruner's reason."""
    logger = get_run_logger()
    engine = engine_for(training)
    max_rounds = training.rounds
    progress_id = create_progress_artifact(  # keyed: listed on the Artifacts page, the latest per model
        progress=0.0,
        key=artifact_key("training", model_name),
        description=f"Federated rounds of {model_name} over {len(consortium.names)} institutions (max {max_rounds})",
    )

    def tell(event: dict) -> None:
        for listener in list(_round_listeners):
            listener({**event, "max_rounds": max_rounds})

    def report(metrics) -> None:
        m = metrics if isinstance(metrics, dict) else asdict(metrics)
        logger.info(_describe(m, max_rounds), extra={ROUND_RECORD: True})
        update_progress_artifact(progress_id, 100.0 * m["round"] / max_rounds)
        tell({**m, "event": "round"})
        if lock_check is not None:
            lock_check(f"after round {m['round']}")
        if after_round is not None:
            after_round(m)

    logger.info(
        "training: %s, up to %d rounds over %d institutions (%s); starting the training engine",
        engine.describe(training),
        max_rounds,
        len(consortium.names),
        ", ".join(consortium.names),
    )
    tell({"event": "start"})
    try:
        outcome = engine.train(
            consortium,
            space,
            training,
            positive_weight,
            model_dir,
            checkpoint_dir=checkpoint_dir,
            privacy=privacy,
            isolation=isolation,
            scaling=scaling,
            on_round=report,
            run_key=run_key,
            log=logger.info,
            warn=logger.warning,
        )
    except TrialPruned as pruned:  # the study's decision, not a failure: the run shows Cancelled, with why
        return Cancelled(message=str(pruned))
    finally:
        tell({"event": "end"})
    if outcome.resumed_from_round:
        logger.info("resumed from the checkpoint of round %d in %s", outcome.resumed_from_round, checkpoint_dir)
    if outcome.stopped_early:
        logger.info(
            "stopped early after round %d of %d: validation loss has not improved since round %d",
            len(outcome.rounds),
            max_rounds,
            outcome.best_round,
        )
    for name in uncounted(outcome.participation):  # a deadline or a buffer may leave a slow bank out
        logger.warning(
            "institution '%s': none of its updates counted in this training (every one arrived after its "
            "round closed and was dropped): the model learned nothing from its rows; raise "
            "training.schedule.deadline_seconds or max_staleness",
            name,
        )
    logger.info(
        "training done: %d rounds; the model of round %d (the best by federated validation loss) is the candidate",
        len(outcome.rounds),
        outcome.best_round,
    )
    update_progress_artifact(progress_id, 100.0)
    return outcome


@task(name="train-local-baseline", task_run_name="local-baseline-{extract.institution}")
def train_local_baseline(
    extract: Extract,
    schema: Schema,
    features: list[str],
    split: Split,
    training,
    baselines: BaselinesConfig,
    positive_weight: float,
    model_dir: Path,
) -> str:
    """Baseline: the same architecture trained on this institution's rows alone (its own layout,
    standardization, fit/validation split and loss); the model a member would have without federation."""
    rows = load_parts(extract, schema, split, ("train", "fit", "validation"))
    own = feature_space(
        schema, features, split, [local_statistics(extract.institution, rows["train"], schema, features)]
    )
    return engine_for(training).baseline(
        rows["fit"], rows["validation"], own, training, baselines, positive_weight, model_dir
    )


@task(name="train-pooled-baseline", task_run_name="train-pooled-baseline")
def train_pooled_baseline(
    extracts: list[Extract],
    space: FeatureSpace,
    training,
    baselines: BaselinesConfig,
    positive_weight: float,
    model_dir: Path,
) -> str:
    """Baseline, simulation mode only: the same architecture trained on every institution's rows
    pooled in one place, which federation exists to avoid; the accuracy federation aims to match."""
    parts = [load_parts(extract, space.schema, space.split, ("fit", "validation")) for extract in extracts]
    return engine_for(training).baseline(
        pd.concat(p["fit"] for p in parts),
        pd.concat(p["validation"] for p in parts),
        space,
        training,
        baselines,
        positive_weight,
        model_dir,
    )
