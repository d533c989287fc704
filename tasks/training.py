"""Training stage: federated training over the admitted institutions, handed to fed_models."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from hostguard import loopback
from hostguard.loopback import Isolation
from tasks.data import as_split, combine_statistics, load_parts, local_statistics

_round_listeners: list[Callable[[dict], None]] = []


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
    """Call `callback(round metrics)` after every federated round trained in this process (CLI progress)."""
    _round_listeners.append(callback)
    try:
        yield
    finally:
        _round_listeners.remove(callback)


@dataclass(frozen=True)
class TrainingOutcome:
    """The candidate model on disk, per-round metrics, and how the run went."""

    model_path: str
    rounds: list[dict]
    examples: dict[str, int]
    best_round: int
    stopped_early: bool
    resumed_from_round: int
    positive_class_weight: float
    rounds_trained: dict[str, int]


def _model_spec(model: dict, seed: int):
    """The run config's model section as fed_models' ModelSpec."""
    from fed_models.keras_models import ModelSpec

    return ModelSpec(model["kind"], tuple(model["hidden_units"]), model["dropout"], seed=seed)


def _privacy_spec(privacy: dict | None):
    """A privacy plan's training part (PrivacyPlan.for_training) as fed_models' privacy settings."""
    from fed_models.training import ClientLevelPrivacy, RecordLevelPrivacy

    if privacy is None:
        return None
    if privacy["mechanism"] == "record_level":
        return RecordLevelPrivacy(privacy["clip_norm"], dict(privacy["noise_multipliers"]))
    [noise] = set(privacy["noise_multipliers"].values())  # client level: one noise for the aggregate
    return ClientLevelPrivacy(privacy["clip_norm"], noise, privacy["adaptive_clipping"])


def _describe(m: dict, max_rounds: int) -> str:
    """One round as logged; a figure differential privacy leaves unmeasured (NaN) is left out."""
    train = "" if math.isnan(m["loss"]) else f"train loss {m['loss']:.4f}, "
    norm = "" if math.isnan(m["client_update_norm"]) else f", mean update norm {m['client_update_norm']:.4g}"
    text = (f"round {m['round']}/{max_rounds}: {train}validation loss {m['validation_loss']:.4f}, validation AUC "
            f"{m['validation_auc']:.4f}, {m['institutions']} institutions{norm}")
    if m["non_finite_updates"]:
        text += f", {m['non_finite_updates']} non-finite update(s) dropped"
    return text


# Retried once: a crash mid-training (a lost TFF worker, a full disk) resumes from the last
# round's checkpoint instead of starting over.
@task(name="train-federated", retries=1, retry_delay_seconds=2)
def train_federated(
    institutions: list[tuple[str, Path, dict[str, str]]],
    features: list[str],
    label: str,
    holdout_fraction: float,
    validation_fraction: float,
    seed: int,
    mean: list[float],
    std: list[float],
    training: dict,
    positive_class_weight: float,
    model_path: Path,
    checkpoint_dir: Path,
    privacy: dict | None = None,
    isolation: Isolation | None = None,
) -> TrainingOutcome:
    """Train `training` (the run config's training section) over the institutions; save the best model.

    Each institution fits on its fit split and reports validation metrics on its validation
    split. In this simulation one process holds every client's dataset, as TFF's local runtime
    needs; each institution's rows stay a separate client dataset and are never concatenated.
    `privacy` (a PrivacyPlan's training part) makes the training differentially private.
    `isolation` (worker_isolation) keeps TFF's worker off the network.
    """
    from fed_models.keras_models import export_model  # TF/TFF import paid only when training
    from fed_models.training import ClientData, TrainingSpec, train

    logger = get_run_logger()
    split = dict(holdout_fraction=holdout_fraction, seed=seed, validation_fraction=validation_fraction)
    clients, validation = [], []
    for name, path, columns in institutions:
        rows = load_parts(name, path, columns, label, parts=("fit", "validation"), **split)
        fit, held = as_split(rows["fit"], features, label), as_split(rows["validation"], features, label)
        clients.append(ClientData(name, fit.x, fit.y))
        validation.append(ClientData(name, held.x, held.y))
    model_spec = _model_spec(training["model"], seed)
    stopping = training["early_stopping"] or {}
    spec = TrainingSpec(
        model=model_spec,
        algorithm=training["algorithm"],
        rounds=training["rounds"],
        local_epochs=training["local_epochs"],
        batch_size=training["batch_size"],
        client_learning_rate=training["client_learning_rate"],
        server_learning_rate=training["server_learning_rate"],
        proximal_strength=training["proximal_strength"],
        clients_per_round=training["clients_per_round"],
        positive_weight=positive_class_weight,
        aggregation=training["aggregation"],
        patience=stopping.get("patience"),
        min_delta=stopping.get("min_delta", 0.0),
        seed=seed,
        privacy=_privacy_spec(privacy),
    )
    max_rounds = spec.rounds
    progress_id = create_progress_artifact(
        progress=0.0, description=f"Federated rounds of {len(clients)} institutions (max {max_rounds})")

    def report(metrics) -> None:
        m = asdict(metrics)
        logger.info(_describe(m, max_rounds))
        update_progress_artifact(progress_id, 100.0 * m["round"] / max_rounds)
        for listener in list(_round_listeners):
            listener({**m, "max_rounds": max_rounds})

    result = train(clients, np.asarray(mean), np.asarray(std), spec, validation=validation,
                   checkpoint_dir=Path(checkpoint_dir), on_round=report, isolation=isolation)
    if result.resumed_from_round:
        logger.info("resumed from the checkpoint of round %d in %s", result.resumed_from_round, checkpoint_dir)
    if result.stopped_early:
        logger.info("stopped early after round %d: validation loss has not improved since round %d",
                    len(result.rounds), result.best_round)
    update_progress_artifact(progress_id, 100.0)
    export_model(result.weights, model_spec, np.asarray(mean), np.asarray(std), Path(model_path))
    return TrainingOutcome(
        model_path=str(model_path),
        rounds=[asdict(r) for r in result.rounds],
        examples={c.institution: int(len(c.y)) for c in clients},
        best_round=result.best_round,
        stopped_early=result.stopped_early,
        resumed_from_round=result.resumed_from_round,
        positive_class_weight=positive_class_weight,
        rounds_trained=result.rounds_trained,
    )


def _train_centralized(fit, validation, mean, std, model: dict, baselines: dict, positive_class_weight: float,
                       seed: int, model_path: Path) -> str:
    from fed_models.centralized import train_centralized
    from fed_models.keras_models import export_model

    spec = _model_spec(model, seed)
    weights = train_centralized(
        fit.x, fit.y, validation.x, validation.y, np.asarray(mean), np.asarray(std), spec,
        max_epochs=baselines["max_epochs"], patience=baselines["patience"], batch_size=baselines["batch_size"],
        learning_rate=baselines["learning_rate"], positive_weight=positive_class_weight)
    return str(export_model(weights, spec, np.asarray(mean), np.asarray(std), Path(model_path)))


@task(name="train-local-baseline", task_run_name="local-baseline-{institution}")
def train_local_baseline(
    institution: str,
    path: Path,
    columns: dict[str, str] | None,
    features: list[str],
    label: str,
    holdout_fraction: float,
    validation_fraction: float,
    seed: int,
    model: dict,
    baselines: dict,
    positive_class_weight: float,
    model_path: Path,
) -> str:
    """Baseline: the same architecture trained on this institution's rows alone (its own
    standardization, fit/validation split and loss); the model a member would have without federation."""
    rows = load_parts(institution, path, columns, label, parts=("train", "fit", "validation"),
                      holdout_fraction=holdout_fraction, seed=seed, validation_fraction=validation_fraction)
    train = as_split(rows["train"], features, label)
    mean, std = combine_statistics([local_statistics(institution, train.x, train.y)])
    return _train_centralized(as_split(rows["fit"], features, label), as_split(rows["validation"], features, label),
                              mean, std, model, baselines, positive_class_weight, seed, model_path)


@task(name="train-pooled-baseline")
def train_pooled_baseline(
    institutions: list[tuple[str, Path, dict[str, str]]],
    features: list[str],
    label: str,
    holdout_fraction: float,
    validation_fraction: float,
    seed: int,
    mean: list[float],
    std: list[float],
    model: dict,
    baselines: dict,
    positive_class_weight: float,
    model_path: Path,
) -> str:
    """Baseline, simulation mode only: the same architecture trained on every institution's rows
    pooled in one place, which federation exists to avoid; the accuracy federation aims to match."""
    fits, validations = [], []
    for name, path, columns in institutions:
        rows = load_parts(name, path, columns, label, parts=("fit", "validation"),
                          holdout_fraction=holdout_fraction, seed=seed, validation_fraction=validation_fraction)
        fits.append(rows["fit"])
        validations.append(rows["validation"])
    return _train_centralized(as_split(pd.concat(fits), features, label), as_split(pd.concat(validations), features, label),
                              mean, std, model, baselines, positive_class_weight, seed, model_path)
