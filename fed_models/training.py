"""Federated training: weighted FedAvg over institutions' local data with TFF."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fed_models import runtime
from fed_models.client_data import client_dataset, element_spec
from fed_models.keras_models import build_logistic_regression


@dataclass(frozen=True)
class ClientData:
    """One institution's training rows, as arrays (they never leave the institution)."""

    institution: str
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class FedAvgSpec:
    rounds: int
    local_epochs: int
    batch_size: int
    client_learning_rate: float
    server_learning_rate: float
    seed: int


@dataclass(frozen=True)
class RoundMetrics:
    """Training metrics of one round, aggregated over the institutions that took part."""

    round: int
    loss: float
    auc: float
    accuracy: float
    num_examples: int


@dataclass(frozen=True)
class TrainingResult:
    weights: list[np.ndarray]
    rounds: list[RoundMetrics]


def _model_fn(mean: np.ndarray, std: np.ndarray) -> Callable[[], tff.learning.models.VariableModel]:
    spec = element_spec(len(mean))

    def model_fn() -> tff.learning.models.VariableModel:
        return tff.learning.models.from_keras_model(
            build_logistic_regression(mean, std),
            loss=tf.keras.losses.BinaryCrossentropy(),
            input_spec=spec,
            metrics=[
                tf.keras.metrics.AUC(name="auc"),
                tf.keras.metrics.BinaryAccuracy(name="accuracy"),
            ],
        )

    return model_fn


def _client_seed(seed: int, round_num: int, client_index: int) -> int:
    return (seed * 1_000_003 + round_num * 1_009 + client_index) % (2**31 - 1)


def train_fed_avg(
    clients: Sequence[ClientData],
    mean: np.ndarray,
    std: np.ndarray,
    spec: FedAvgSpec,
    on_round: Callable[[RoundMetrics], None] | None = None,
) -> TrainingResult:
    """Run `spec.rounds` rounds of example-weighted FedAvg; return final weights and per-round metrics.

    Each round every institution trains `local_epochs` epochs of SGD from the global model;
    the server averages the updates weighted by example counts and applies them with SGD.
    """
    runtime.ensure_context()
    tf.keras.utils.set_random_seed(spec.seed)
    process = tff.learning.algorithms.build_weighted_fed_avg(
        _model_fn(mean, std),
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(spec.client_learning_rate),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(spec.server_learning_rate),
    )
    state = process.initialize()
    history: list[RoundMetrics] = []
    for round_num in range(1, spec.rounds + 1):
        datasets = [
            client_dataset(
                c.x, c.y,
                batch_size=spec.batch_size,
                epochs=spec.local_epochs,
                seed=_client_seed(spec.seed, round_num, i),
            )
            for i, c in enumerate(clients)
        ]
        output = process.next(state, datasets)
        state = output.state
        train = output.metrics["client_work"]["train"]
        metrics = RoundMetrics(
            round=round_num,
            loss=float(train["loss"]),
            auc=float(train["auc"]),
            accuracy=float(train["accuracy"]),
            num_examples=int(train["num_examples"]),
        )
        history.append(metrics)
        if on_round is not None:
            on_round(metrics)
    weights = [np.asarray(w) for w in process.get_model_weights(state).trainable]
    return TrainingResult(weights=weights, rounds=history)
