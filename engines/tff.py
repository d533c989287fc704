"""The TFF engine: federated training of the run's network over the admitted institutions (fed_models), its
export as a riskmodel directory, and the same network trained on rows in one place (baselines)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contract.data import labels
from engines.base import Architecture, TrainingOutcome
from engines.privacy import PrivacyPlan
from hostguard.loopback import Isolation
from institution.monitoring import development_bins
from institution.statistics import FeatureSpace
from riskmodel import model as exported
from riskmodel.scaling import Scaling
from runconfig import BaselinesConfig, ModelConfig, RunConfig, TrainingConfig


def _model_spec(model: ModelConfig, seed: int, initial_bias: float = 0.0):
    """The run config's model section as fed_models' ModelSpec."""
    from fed_models.keras_models import ModelSpec

    return ModelSpec(model.kind, tuple(model.hidden_units), model.dropout, seed=seed, initial_bias=initial_bias)


def base_rate_log_odds(base_rate: float, positive_weight: float) -> float:
    """Where the model's output starts: the log-odds of the base rate as the weighted loss sees it (positives
    counted `positive_weight` times), so that the first rounds fit the features, not the intercept
    (from p = 0.5, a 5 %-bad book needed 300 rounds to be calibrated). 0 for a rate of 0 or 1."""
    if not 0.0 < base_rate < 1.0:
        return 0.0
    return math.log(positive_weight * base_rate / (1.0 - base_rate))


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


def export(
    weights: list[np.ndarray], model: ModelConfig, space: FeatureSpace, directory: Path, scaling: Scaling | None = None
) -> str:
    """Write an exported model: the Keras network (the space's standardization inside), its feature layout and,
    for a logistic regression, its points scaling."""
    from fed_models.keras_models import export_model

    directory = Path(directory)
    export_model(
        weights,
        _model_spec(model, space.split.seed),
        np.asarray(space.mean),
        np.asarray(space.std),
        directory / exported.KERAS_FILE,
    )
    exported.save(
        directory,
        engine="keras",
        layout=space.layout,
        output=space.schema.output,
        bins=development_bins(space),
        engine_file=exported.KERAS_FILE,
        scaling=scaling if model.kind == "logistic_regression" else None,
    )
    return str(directory)


def training_spec(
    training: TrainingConfig,
    space: FeatureSpace,
    positive_weight: float,
    privacy: PrivacyPlan | None,
    secure: bool,
    institutions: int,
):
    """The run config's training section over `institutions` as fed_models' TrainingSpec: the one place its
    settings are mapped."""
    from fed_models.training import Schedule, TrainingSpec

    stopping = training.early_stopping
    return TrainingSpec(
        model=_model_spec(training.model, space.split.seed, base_rate_log_odds(space.base_rate, positive_weight)),
        algorithm=training.algorithm,
        rounds=training.rounds,
        local_epochs=training.local_epochs,
        batch_size=training.batch_size,
        client_learning_rate=training.client_learning_rate,
        server_learning_rate=training.server_learning_rate,
        proximal_strength=training.proximal_strength,
        clients_per_round=training.sampled(institutions),
        positive_weight=positive_weight,
        # Under secure aggregation each node clips its update and zeroes a non-finite one; the coordinator
        # has only their sum, whose mean it takes.
        aggregation="plain" if secure else training.aggregation,
        patience=stopping.patience if stopping else None,
        min_delta=stopping.min_delta if stopping else 0.0,
        seed=space.split.seed,
        privacy=_privacy_spec(privacy),
        schedule=Schedule(**training.schedule.model_dump()),
    )


def describe_schedule(schedule) -> str:
    """How rounds waited for institutions, as the version's lineage says it."""
    late = (
        f"updates up to {schedule.max_staleness} versions old applied at "
        f"1/(1+staleness)^{schedule.staleness_exponent:g} of their weight"
    )
    if schedule.mode == "deadline":
        return (
            f"deadline {schedule.deadline_seconds:g} s, at least {schedule.min_share:.0%} of the fit rows reported; "
            + ("late updates dropped" if schedule.late_updates == "drop" else f"late {late}")
        )
    if schedule.mode == "buffered":
        return f"buffered asynchronous (FedBuff), a server step per {schedule.buffer_size} updates; {late}"
    return "synchronous: every sampled institution in every round"


def federated_training(
    consortium,
    space: FeatureSpace,
    training: TrainingConfig,
    positive_weight: float,
    model_dir: Path,
    *,
    checkpoint_dir: Path | None = None,
    privacy: PrivacyPlan | None = None,
    isolation: Isolation | None = None,
    scaling: Scaling | None = None,
    on_round: Callable | None = None,
    run_key: str = "",
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> TrainingOutcome:
    """Train `training` over the consortium's institutions in `space`; export the best round's model to
    `model_dir`.

    Each institution fits on its fit split (encoded by the space's layout) and reports validation metrics on its
    validation split, where its rows are (consortium.local: in this process in simulation, at its node
    across silos); only updates and summed metrics come back. `run_key` identifies the training to the
    nodes (idempotent rounds). `privacy` makes the training differentially private; `isolation`
    (worker_isolation) keeps TFF's worker off the network; `scaling` gives a logistic regression its
    scorecard points; `on_round` receives each round's fed_models.training.RoundMetrics; `log` lines on
    how each secure sum went (under secure aggregation), `warn` a line the moment a node is left out.
    """
    from fed_models.training import train  # TF/TFF import paid only when training

    institutions = consortium.training(
        space, run_key, {i.institution: i.delta for i in privacy.institutions} if privacy else None
    )
    secure = consortium.secure
    if consortium.cross_silo:
        institutions.log, institutions.warn = log, warn
    result = train(
        institutions,
        np.asarray(space.mean),
        np.asarray(space.std),
        training_spec(training, space, positive_weight, privacy, secure, len(institutions.names)),
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
        on_round=on_round,
        isolation=isolation,
    )
    return TrainingOutcome(
        model_path=export(result.weights, training.model, space, model_dir, scaling),
        participation=result.participation if training.schedule.mode != "synchronous" else {},
        rounds=[asdict(r) for r in result.rounds],
        examples=dict(zip(institutions.names, institutions.fit_rows, strict=True)),
        best_round=result.best_round,
        stopped_early=result.stopped_early and len(result.rounds) < training.rounds,  # before its limit
        resumed_from_round=result.resumed_from_round,
        positive_class_weight=positive_weight,
        rounds_trained=result.rounds_trained,
        lost=result.lost,
        charged=result.charged,
        lineage={
            "training.engine": "tff",
            "training.schedule": describe_schedule(training.schedule),
            **(consortium.secure_tags() if secure else {}),
        },
        max_rounds=training.rounds,
    )


def train_centralized(
    fit: pd.DataFrame,
    validation: pd.DataFrame,
    space: FeatureSpace,
    training: TrainingConfig,
    baselines: BaselinesConfig,
    positive_weight: float,
    model_dir: Path,
) -> str:
    """The run's network trained on rows in one place: the same architecture (Adam, early stopping)."""
    from fed_models.centralized import train_centralized

    layout, schema = space.layout, space.schema
    weights = train_centralized(
        layout.encode(fit),
        labels(fit, schema),
        layout.encode(validation),
        labels(validation, schema),
        np.asarray(space.mean),
        np.asarray(space.std),
        _model_spec(training.model, space.split.seed),
        max_epochs=baselines.max_epochs,
        patience=baselines.patience,
        batch_size=baselines.batch_size,
        learning_rate=baselines.learning_rate,
        positive_weight=positive_weight,
    )
    return export(weights, training.model, space, model_dir)


class TffEngine:
    """Neural networks and logistic regressions trained with TensorFlow Federated (fed_models)."""

    name = "tff"
    modules: tuple[str, ...] = ("fed_models.training",)

    def describe(self, training: TrainingConfig) -> str:
        model = training.model
        layers = f"[{', '.join(map(str, model.hidden_units))}]" if model.hidden_units else ""
        return f"{training.algorithm} of a {model.kind.replace('_', ' ')}{layers} (TensorFlow Federated)"

    def architecture(self, config: RunConfig) -> Architecture:
        training = config.training
        model = training.model
        return Architecture(
            model="logistic regression"
            if model.kind == "logistic_regression"
            else (f"MLP {model.hidden_units} (dropout {model.dropout:g})"),
            algorithm=training.algorithm,
            aggregation=(
                "client-level DP (Gaussian, clipped, unweighted)"
                if config.privacy.mechanism == "client_level"
                else training.aggregation
            ),
            kind=model.kind,
        )

    def train(self, consortium, space, training, positive_weight, model_dir, **options: Any) -> TrainingOutcome:
        return federated_training(consortium, space, training, positive_weight, model_dir, **options)

    def baseline(self, fit, validation, space, training, baselines, positive_weight, model_dir) -> str:
        return train_centralized(fit, validation, space, training, baselines, positive_weight, model_dir)


TFF = TffEngine()
