"""Training stage: federated training over the admitted institutions, handed to fed_models."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from hostguard import loopback
from hostguard.loopback import Isolation
from riskmodel import model as exported
from riskmodel.layout import Layout
from riskmodel.scorecard import Scaling
from tasks.config import BaselinesConfig, ModelConfig, TrainingConfig
from tasks.data import Extract, Split, labels, load_parts
from tasks.privacy import PrivacyPlan
from tasks.schema import Schema
from tasks.statistics import consortium_layout, local_statistics, standardization

_round_listeners: list[Callable[[dict], None]] = []
ROUND_RECORD = "fedrisk_round"  # set on a round's log record: a terminal's progress bar shows the same figures


class TrainingStopped(RuntimeError):
    """Too few institutions left mid-training (quorum, or secure aggregation's threshold); nothing is
    registered and the next run resumes from the last round's checkpoint."""


def _worth_retrying(task, task_run, state) -> bool:
    """A crash is retried (it resumes from the checkpoint); a stop the quorum rules decided is not, nor an
    institution's refusal (its policy answers the same again), nor an error that says it must not be
    (`retryable = False`: a lost retraining lock)."""
    error = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return (not isinstance(error, TrainingStopped) and not getattr(error, "refusal", False)
            and getattr(error, "retryable", True))


def import_engine_in_background() -> threading.Thread:
    """Start importing TensorFlow and TFF (10-15 s) on a daemon thread, so that a command which is
    about to retrain pays for it while the Prefect API starts and the institutions are validated."""
    def load() -> None:
        import fed_models.training  # noqa: F401

    thread = threading.Thread(target=load, name="import-training-engine", daemon=True)
    thread.start()
    return thread


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


@dataclass(frozen=True)
class TrainingOutcome:
    """The candidate model (an exported model directory), per-round metrics, and how the run went."""

    model_path: str
    rounds: list[dict]
    examples: dict[str, int]
    best_round: int
    stopped_early: bool
    resumed_from_round: int
    positive_class_weight: float
    rounds_trained: dict[str, int]
    lost: dict[str, str] = field(default_factory=dict)  # institutions left out mid-training, and why
    engine: str = "tff"
    lineage: dict[str, str] = field(default_factory=dict)  # how the engine trained, as version tags
    max_rounds: int = 0  # the configured limit (0: unknown)
    charged: dict[str, tuple[float, float]] = field(default_factory=dict)  # each node's own (epsilon, delta)


def _model_spec(model: ModelConfig, seed: int, initial_bias: float = 0.0):
    """The run config's model section as fed_models' ModelSpec."""
    from fed_models.keras_models import ModelSpec

    return ModelSpec(model.kind, tuple(model.hidden_units), model.dropout, seed=seed, initial_bias=initial_bias)


def base_rate_log_odds(base_rate: float | None, positive_class_weight: float) -> float:
    """Where the model's output starts: the log-odds of the base rate as the weighted loss sees it (positives
    counted `positive_class_weight` times), so that the first rounds fit the features, not the intercept
    (from p = 0.5, a 5 %-bad book needed 300 rounds to be calibrated). 0 when the rate is unknown."""
    if base_rate is None or not 0.0 < base_rate < 1.0:
        return 0.0
    return math.log(positive_class_weight * base_rate / (1.0 - base_rate))


def _privacy_spec(plan: PrivacyPlan | None):
    """A privacy plan's training part as fed_models' privacy settings."""
    from fed_models.training import ClientLevelPrivacy, RecordLevelPrivacy

    if plan is None:
        return None
    noise = {i.institution: i.noise_multiplier for i in plan.institutions}
    if plan.mechanism == "record_level":
        return RecordLevelPrivacy(plan.clip_norm, noise)
    [multiplier] = set(noise.values())  # client level: one noise for the aggregate
    return ClientLevelPrivacy(plan.clip_norm, multiplier, plan.adaptive_clipping)


def engine_name(training) -> str:
    """The training engine and what it trains, as a status line names it."""
    if training.engine == "xgboost":
        return "federated gradient-boosted trees (XGBoost)"
    model = training.model
    layers = f"[{', '.join(map(str, model.hidden_units))}]" if model.hidden_units else ""
    return f"{training.algorithm} of a {model.kind.replace('_', ' ')}{layers} (TensorFlow Federated)"


def _describe(m: dict, max_rounds: int) -> str:
    """One round as logged; a figure the engine or differential privacy leaves unmeasured is left out."""
    nan = float("nan")
    train = "" if math.isnan(m.get("loss", nan)) else f"train loss {m['loss']:.4f}, "
    norm = "" if math.isnan(m.get("client_update_norm", nan)) else f", mean update norm {m['client_update_norm']:.4g}"
    members = f", {m['institutions']} institutions" if "institutions" in m else ""
    text = (f"round {m['round']}/{max_rounds}: {train}validation loss {m['validation_loss']:.4f}, validation AUC "
            f"{m['validation_auc']:.4f}{members}{norm}")
    if m.get("non_finite_updates"):
        text += f", {m['non_finite_updates']} non-finite update(s) dropped"
    return text


def export(weights: list[np.ndarray], model: ModelConfig, seed: int, layout: Layout, mean, std, output: str,
           directory: Path, scaling: Scaling | None = None) -> str:
    """Write an exported model: the Keras network (standardization inside), its feature layout and, for
    a logistic regression, its points scaling."""
    from fed_models.keras_models import export_model

    directory = Path(directory)
    export_model(weights, _model_spec(model, seed), np.asarray(mean), np.asarray(std), directory / exported.KERAS_FILE)
    exported.save(directory, engine="keras", layout=layout, output=output, engine_file=exported.KERAS_FILE,
                  scaling=scaling if model.kind == "logistic_regression" else None)
    return str(directory)


def federated_training(
    consortium,
    schema: Schema,
    layout: Layout,
    split: Split,
    mean: list[float],
    std: list[float],
    training: TrainingConfig,
    positive_class_weight: float,
    model_dir: Path,
    checkpoint_dir: Path | None = None,
    privacy: PrivacyPlan | None = None,
    isolation: Isolation | None = None,
    scaling: Scaling | None = None,
    on_round: Callable | None = None,
    run_key: str = "",
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    base_rate: float | None = None,
) -> TrainingOutcome:
    """Train `training` over the consortium's institutions; export the best round's model to `model_dir`.

    Each institution fits on its fit split (encoded by `layout`) and reports validation metrics on its
    validation split, where its rows are (tasks.consortium: in this process in simulation, at its node
    across silos); only updates and summed metrics come back. `run_key` identifies the training to the
    nodes (idempotent rounds). `privacy` makes the training differentially private; `isolation`
    (worker_isolation) keeps TFF's worker off the network; `scaling` gives a logistic regression its
    scorecard points; `on_round` receives each round's fed_models.training.RoundMetrics; `log` lines on
    how each secure sum went (under secure aggregation), `warn` a line the moment a node is left out;
    `base_rate` (positives over rows, from the federated statistics) is where a network's output starts.
    """
    if training.engine == "xgboost":
        from tasks.trees import tree_training

        return tree_training(consortium, schema, layout, split, training, positive_class_weight, model_dir,
                             isolation, on_round, run_key)
    from fed_models.training import TrainingSpec, train  # TF/TFF import paid only when training

    institutions = consortium.training(schema, layout, split, run_key,
                                       {i.institution: i.delta for i in privacy.institutions} if privacy else None)
    secure = consortium.secure
    if consortium.cross_silo:
        institutions.log, institutions.warn = log, warn
    stopping = training.early_stopping
    spec = TrainingSpec(
        model=_model_spec(training.model, split.seed, base_rate_log_odds(base_rate, positive_class_weight)),
        algorithm=training.algorithm,
        rounds=training.rounds,
        local_epochs=training.local_epochs,
        batch_size=training.batch_size,
        client_learning_rate=training.client_learning_rate,
        server_learning_rate=training.server_learning_rate,
        proximal_strength=training.proximal_strength,
        clients_per_round=training.clients_per_round,
        positive_weight=positive_class_weight,
        # Under secure aggregation each node clips its update and zeroes a non-finite one; the coordinator
        # has only their sum, whose mean it takes.
        aggregation="plain" if secure else training.aggregation,
        patience=stopping.patience if stopping else None,
        min_delta=stopping.min_delta if stopping else 0.0,
        seed=split.seed,
        privacy=_privacy_spec(privacy),
    )
    result = train(institutions, np.asarray(mean), np.asarray(std), spec,
                   checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None, on_round=on_round,
                   isolation=isolation)
    return TrainingOutcome(
        model_path=export(result.weights, training.model, split.seed, layout, mean, std, schema.output, model_dir,
                          scaling),
        rounds=[asdict(r) for r in result.rounds],
        examples=dict(zip(institutions.names, institutions.fit_rows, strict=True)),
        best_round=result.best_round,
        stopped_early=result.stopped_early,
        resumed_from_round=result.resumed_from_round,
        positive_class_weight=positive_class_weight,
        rounds_trained=result.rounds_trained,
        lost=result.lost,
        charged=result.charged,
        lineage={"training.engine": "tff", **(consortium.secure_tags() if secure else {})},
        max_rounds=training.rounds,
    )


# Retried once: a crash mid-training (a lost TFF worker, a full disk) resumes from the last
# round's checkpoint instead of starting over. A TrainingStopped is a decision, not retried.
@task(name="train-federated", retries=1, retry_delay_seconds=2, retry_condition_fn=_worth_retrying,
      cache_policy=NO_CACHE)
def train_federated(consortium, schema: Schema, layout: Layout, split: Split, mean: list[float],
                    std: list[float], training: TrainingConfig, positive_class_weight: float, model_dir: Path,
                    checkpoint_dir: Path, privacy: PrivacyPlan | None = None, isolation: Isolation | None = None,
                    scaling: Scaling | None = None, run_key: str = "",
                    lock_check: Callable[[str], None] | None = None,
                    base_rate: float | None = None) -> TrainingOutcome:
    """`federated_training`, with each round logged, shown in a Prefect progress artifact and passed to the
    round listeners (the CLI's progress bar). `lock_check(where)` runs after each round: it raises to stop the
    training when the retraining's lock was lost."""
    logger = get_run_logger()
    max_rounds = training.rounds
    progress_id = create_progress_artifact(
        progress=0.0, description=f"Federated rounds of {len(consortium.names)} institutions (max {max_rounds})")

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

    logger.info("training: %s, up to %d rounds over %d institutions (%s); starting the training engine",
                engine_name(training), max_rounds, len(consortium.names), ", ".join(consortium.names))
    tell({"event": "start"})
    try:
        outcome = federated_training(consortium, schema, layout, split, mean, std, training, positive_class_weight,
                                     model_dir, checkpoint_dir, privacy, isolation, scaling, on_round=report,
                                     run_key=run_key, log=logger.info, warn=logger.warning, base_rate=base_rate)
    finally:
        tell({"event": "end"})
    if outcome.resumed_from_round:
        logger.info("resumed from the checkpoint of round %d in %s", outcome.resumed_from_round, checkpoint_dir)
    if outcome.stopped_early and len(outcome.rounds) < max_rounds:
        logger.info("stopped early after round %d of %d: validation loss has not improved since round %d",
                    len(outcome.rounds), max_rounds, outcome.best_round)
    logger.info("training done: %d rounds; the model of round %d (the best by federated validation loss) is the "
                "candidate", len(outcome.rounds), outcome.best_round)
    update_progress_artifact(progress_id, 100.0)
    return outcome


def _train_centralized(fit: pd.DataFrame, validation: pd.DataFrame, schema: Schema, layout: Layout, mean, std,
                       training, baselines: BaselinesConfig, positive_class_weight: float, seed: int,
                       model_dir: Path) -> str:
    """The run's model trained on rows in one place: the same architecture (Adam, early stopping), or the
    same trees."""
    if training.engine == "xgboost":
        from tasks.trees import tree_baseline

        return tree_baseline(fit, validation, schema, layout, training, positive_class_weight, seed, model_dir)
    from fed_models.centralized import train_centralized

    model = training.model
    spec = _model_spec(model, seed)
    weights = train_centralized(
        layout.encode(fit), labels(fit, schema), layout.encode(validation), labels(validation, schema),
        np.asarray(mean), np.asarray(std), spec, max_epochs=baselines.max_epochs, patience=baselines.patience,
        batch_size=baselines.batch_size, learning_rate=baselines.learning_rate, positive_weight=positive_class_weight)
    return export(weights, model, seed, layout, mean, std, schema.output, model_dir)


@task(name="train-local-baseline", task_run_name="local-baseline-{extract.institution}")
def train_local_baseline(extract: Extract, schema: Schema, features: list[str], split: Split, training,
                         baselines: BaselinesConfig, positive_class_weight: float, model_dir: Path) -> str:
    """Baseline: the same architecture trained on this institution's rows alone (its own layout,
    standardization, fit/validation split and loss); the model a member would have without federation."""
    rows = load_parts(extract, schema, split, ("train", "fit", "validation"))
    statistics = [local_statistics(extract.institution, rows["train"], schema, features)]
    layout = consortium_layout(schema, features, statistics)
    mean, std = standardization(layout, statistics)
    return _train_centralized(rows["fit"], rows["validation"], schema, layout, mean, std, training, baselines,
                              positive_class_weight, split.seed, model_dir)


@task(name="train-pooled-baseline")
def train_pooled_baseline(extracts: list[Extract], schema: Schema, layout: Layout, split: Split, mean: list[float],
                          std: list[float], training, baselines: BaselinesConfig,
                          positive_class_weight: float, model_dir: Path) -> str:
    """Baseline, simulation mode only: the same architecture trained on every institution's rows
    pooled in one place, which federation exists to avoid; the accuracy federation aims to match."""
    fits, validations = [], []
    for extract in extracts:
        rows = load_parts(extract, schema, split, ("fit", "validation"))
        fits.append(rows["fit"])
        validations.append(rows["validation"])
    return _train_centralized(pd.concat(fits), pd.concat(validations), schema, layout, mean, std, training,
                              baselines, positive_class_weight, split.seed, model_dir)
