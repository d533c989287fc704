"""Training stage: federated training over the admitted institutions, handed to fed_models."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from tasks.data import load_split


@dataclass(frozen=True)
class TrainingOutcome:
    """The candidate model on disk, per-round metrics, and examples each institution trained on."""

    model_path: str
    rounds: list[dict]
    examples: dict[str, int]


@task(name="train-federated")
def train_federated(
    institutions: list[tuple[str, Path, dict[str, str]]],
    features: list[str],
    label: str,
    holdout_fraction: float,
    seed: int,
    mean: list[float],
    std: list[float],
    rounds: int,
    local_epochs: int,
    batch_size: int,
    client_learning_rate: float,
    server_learning_rate: float,
    model_path: Path,
) -> TrainingOutcome:
    """FedAvg over the institutions' training splits; save the model (standardization baked in).

    In this simulation one process holds every client's dataset, as TFF's local runtime needs;
    each institution's rows still stay a separate client dataset and are never concatenated.
    """
    from fed_models.keras_models import export_model  # TF/TFF import paid only when training
    from fed_models.training import ClientData, FedAvgSpec, train_fed_avg

    logger = get_run_logger()
    clients = []
    for name, path, columns in institutions:
        split = load_split(name, path, columns, features, label, part="train",
                           holdout_fraction=holdout_fraction, seed=seed)
        clients.append(ClientData(name, split.x, split.y))
    spec = FedAvgSpec(rounds, local_epochs, batch_size, client_learning_rate, server_learning_rate, seed)

    def report(metrics) -> None:
        logger.info(
            "round %d/%d: loss %.4f, auc %.4f over %d examples from %d institutions",
            metrics.round, rounds, metrics.loss, metrics.auc, metrics.num_examples, len(clients),
        )

    result = train_fed_avg(clients, np.asarray(mean), np.asarray(std), spec, on_round=report)
    export_model(result.weights, np.asarray(mean), np.asarray(std), Path(model_path))
    return TrainingOutcome(
        model_path=str(model_path),
        rounds=[asdict(r) for r in result.rounds],
        examples={c.institution: int(len(c.y)) for c in clients},
    )
