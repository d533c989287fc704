"""Federated training with TFF: FedAvg, FedProx and adaptive server optimizers over institutions.

Each round a seeded sample of institutions trains locally from the global model; the server
aggregates their updates (robustly by default) and applies them with its optimizer; every
institution then scores the new model on its validation split, and only the summed metrics
come back. The best round by federated validation loss is the one exported. Program state is
checkpointed every round so a killed run resumes where it stopped.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fed_models import runtime
from hostguard.loopback import Isolation
from fed_models.accounting import steps_per_round
from fed_models.aggregation import AggregationKind, build_aggregator, build_client_dp_aggregator, update_bytes
from fed_models.checkpoints import Checkpoints
from fed_models.client_data import client_dataset, element_spec
from fed_models.dp_sgd import build_dp_sgd_client_work, poisson_steps, secure_rng
from fed_models.fedprox import ProximalSGD
from fed_models.faults import HONEST, faulty_client_data, with_update_faults
from fed_models.keras_models import ModelSpec, WeightedBinaryCrossentropy, build_model

Algorithm = Literal["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"]
ALGORITHMS: tuple[str, ...] = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad")


@dataclass(frozen=True)
class RecordLevelPrivacy:
    """DP-SGD in every institution's local training: per-example clip norm and each institution's
    noise multiplier (noise stddev / clip norm), by institution name."""

    clip_norm: float
    noise_multipliers: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientLevelPrivacy:
    """Gaussian noise on the sum of institutions' clipped updates (TFF DifferentiallyPrivateFactory).

    `clip_norm` is the fixed clip, or the starting clip of adaptive clipping (to the median norm).
    """

    clip_norm: float
    noise_multiplier: float
    adaptive_clipping: bool = False


# Adaptive server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization") use an
# epsilon ("tau") of about 1e-3; Keras' 1e-7 makes the first server steps huge.
ADAPTIVE_EPSILON = 1e-3


@dataclass(frozen=True)
class ClientData:
    """One institution's rows, as arrays (they never leave the institution)."""

    institution: str
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class TrainingSpec:
    """Everything that decides the trained weights (with the data and the seed)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    algorithm: Algorithm = "fedavg"
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 64
    client_learning_rate: float = 0.05
    server_learning_rate: float = 1.0
    proximal_strength: float = 0.0
    clients_per_round: int | None = None
    positive_weight: float = 1.0
    aggregation: AggregationKind = "robust"
    patience: int | None = None
    min_delta: float = 0.0
    seed: int = 0
    privacy: RecordLevelPrivacy | ClientLevelPrivacy | None = None


@dataclass(frozen=True)
class RoundMetrics:
    """One round: training metrics of the sampled institutions, federated validation, updates.

    Losses are the training objective (with the positive-class weight); validation figures
    are summed over every institution's validation split (NaN when there is none). Update norms
    are of the updates as averaged (after robust zeroing and clipping); bytes are what the
    sampled institutions sent. Under differential privacy, what would fall outside the guarantee
    is not measured (NaN): training-set loss and AUC, and with client-level DP the update norms.
    """

    round: int
    loss: float
    auc: float
    num_examples: int
    institutions: int
    validation_loss: float
    validation_auc: float
    client_update_norm: float
    server_update_norm: float
    non_finite_updates: int
    bytes_sent: int


_NUMERIC_FIELDS = [f.name for f in fields(RoundMetrics)]


@dataclass(frozen=True)
class TrainingResult:
    """The exported (best-round) weights, every round's metrics, how the run went, and in how many
    rounds each institution trained (what its privacy accounting counts)."""

    weights: list[np.ndarray]
    rounds: list[RoundMetrics]
    best_round: int
    stopped_early: bool
    resumed_from_round: int
    rounds_trained: dict[str, int] = field(default_factory=dict)


def _model_fn(spec: TrainingSpec, mean: np.ndarray, std: np.ndarray):
    batch_spec = element_spec(len(mean))

    def model_fn() -> tff.learning.models.VariableModel:
        return tff.learning.models.from_keras_model(
            build_model(spec.model, mean, std),
            loss=WeightedBinaryCrossentropy(spec.positive_weight),
            input_spec=batch_spec,
            metrics=[tf.keras.metrics.AUC(name="auc", num_thresholds=1000)],
        )

    return model_fn


def _server_optimizer(spec: TrainingSpec):
    lr = spec.server_learning_rate
    if spec.algorithm in ("fedavg", "fedprox"):
        return tff.learning.optimizers.build_sgdm(lr)
    if spec.algorithm == "fedadam":
        return tff.learning.optimizers.build_adam(lr, beta_1=0.9, beta_2=0.99, epsilon=ADAPTIVE_EPSILON)
    if spec.algorithm == "fedyogi":
        return tff.learning.optimizers.build_yogi(lr, beta_1=0.9, beta_2=0.99, epsilon=ADAPTIVE_EPSILON)
    if spec.algorithm == "fedadagrad":
        return tff.learning.optimizers.build_adagrad(lr, epsilon=ADAPTIVE_EPSILON)
    raise ValueError(f"unknown algorithm {spec.algorithm!r}; one of {ALGORITHMS}")


def _client_work(spec: TrainingSpec, model_fn, weights_type, mean: np.ndarray, std: np.ndarray):
    """Local training: SGD, proximal SGD for FedProx, DP-SGD under record-level privacy."""
    if isinstance(spec.privacy, RecordLevelPrivacy):
        if spec.algorithm == "fedprox":
            raise ValueError("record-level privacy trains locally with DP-SGD; it does not combine with fedprox")
        return build_dp_sgd_client_work(
            lambda: build_model(spec.model, mean, std), WeightedBinaryCrossentropy(spec.positive_weight).call,
            weights_type, learning_rate=spec.client_learning_rate, clip_norm=spec.privacy.clip_norm,
            batch_size=spec.batch_size, n_features=len(mean))
    if spec.algorithm == "fedprox":
        optimizer = ProximalSGD(spec.client_learning_rate, spec.proximal_strength)
    else:
        optimizer = tff.learning.optimizers.build_sgdm(spec.client_learning_rate)
    if isinstance(spec.privacy, ClientLevelPrivacy):
        # Unweighted (a weight would be a second, unbounded channel), and no training-set metrics:
        # they would leave the institutions without noise.
        return tff.learning.templates.build_model_delta_client_work(
            model_fn, optimizer, tff.learning.ClientWeighting.UNIFORM, metrics_aggregator=_withheld_metrics,
            loop_implementation=tff.learning.LoopImplementation.DATASET_REDUCE)
    return tff.learning.templates.build_model_delta_client_work(
        model_fn, optimizer, tff.learning.ClientWeighting.NUM_EXAMPLES,
        loop_implementation=tff.learning.LoopImplementation.DATASET_REDUCE)


def _withheld_metrics(metric_finalizers):
    """A metrics aggregator that releases nothing (the institutions' metrics stay where they are)."""
    @tff.federated_computation
    def withhold(client_metrics):
        del client_metrics
        return tff.federated_value(collections.OrderedDict(), tff.SERVER)

    return withhold


def _aggregator(spec: TrainingSpec, n_clients: int) -> tff.aggregators.WeightedAggregationFactory:
    """How updates combine: the configured aggregation, or the client-level DP mechanism."""
    if isinstance(spec.privacy, ClientLevelPrivacy):
        return build_client_dp_aggregator(
            noise_multiplier=spec.privacy.noise_multiplier, clip_norm=spec.privacy.clip_norm,
            clients_per_round=min(spec.clients_per_round or n_clients, n_clients),
            adaptive=spec.privacy.adaptive_clipping)
    return build_aggregator(spec.aggregation)


def build_learning_process(spec: TrainingSpec, mean: np.ndarray, std: np.ndarray, n_clients: int,
                           with_faults: bool = False) -> tff.learning.templates.LearningProcess:
    """The TFF learning process of `spec` over `n_clients` institutions: client work, aggregator, server optimizer."""
    if spec.algorithm == "fedprox" and spec.proximal_strength <= 0:
        raise ValueError("fedprox needs a proximal_strength > 0")
    model_fn = _model_fn(spec, mean, std)

    @tff.tensorflow.computation()
    def initial_weights():
        return tff.learning.models.ModelWeights.from_model(model_fn())

    weights_type = initial_weights.type_signature.result
    client_work = _client_work(spec, model_fn, weights_type, mean, std)
    if with_faults:
        client_work = with_update_faults(client_work)
    aggregator = _aggregator(spec, n_clients).create(weights_type.trainable, tff.TensorType(np.float32))
    return tff.learning.templates.compose_learning_process(
        initial_weights,
        tff.learning.templates.build_broadcast_process(weights_type),
        client_work,
        aggregator,
        tff.learning.templates.build_apply_optimizer_finalizer(_server_optimizer(spec), weights_type),
    )


def sample_clients(n_clients: int, per_round: int | None, seed: int, round_num: int) -> list[int]:
    """The institutions (indices) that train in `round_num`: all, or a seeded k of N."""
    if per_round is None or per_round >= n_clients:
        return list(range(n_clients))
    rng = np.random.default_rng([seed, round_num])
    return sorted(int(i) for i in rng.choice(n_clients, size=per_round, replace=False))


def _client_seed(seed: int, round_num: int, client_index: int) -> int:
    return (seed * 1_000_003 + round_num * 1_009 + client_index) % (2**31 - 1)


def _find(measurements, key: str) -> float:
    """The first value named `key` anywhere in TFF's nested measurements (NaN if absent)."""
    if isinstance(measurements, collections.abc.Mapping):
        if key in measurements:
            return float(measurements[key])
        for value in measurements.values():
            found = _find(value, key)
            if not np.isnan(found):
                return found
    return float("nan")


def _program_state(state, history: list[RoundMetrics], best_weights, best_loss: float,
                   best_round: int, stale: int):
    table = np.array([[float(getattr(m, f)) for f in _NUMERIC_FIELDS] for m in history], dtype=np.float64)
    return collections.OrderedDict(
        learning=state,
        history=table.reshape(len(history), len(_NUMERIC_FIELDS)),
        best_weights=[np.asarray(w) for w in best_weights],
        best=np.array([best_loss, best_round, stale], dtype=np.float64),
    )


def _history(table: np.ndarray) -> list[RoundMetrics]:
    types = {f.name: f.type for f in fields(RoundMetrics)}
    return [
        RoundMetrics(**{name: (int(v) if types[name] == "int" else float(v))
                        for name, v in zip(_NUMERIC_FIELDS, row, strict=True)})
        for row in np.asarray(table).reshape(-1, len(_NUMERIC_FIELDS))
    ]


def train(
    clients: Sequence[ClientData],
    mean: np.ndarray,
    std: np.ndarray,
    spec: TrainingSpec,
    *,
    validation: Sequence[ClientData] | None = None,
    checkpoint_dir: Path | None = None,
    update_factors: dict[str, float] | None = None,
    on_round: Callable[[RoundMetrics], None] | None = None,
    privacy_rng: np.random.Generator | None = None,
    isolation: Isolation | None = None,
) -> TrainingResult:
    """Train `spec` over `clients`; return the best round's weights and every round's metrics.

    `validation` (one split per institution) drives early stopping and the best-round choice;
    without it the last round's weights are returned. `checkpoint_dir` makes the run resumable.
    `update_factors` (institution -> factor) simulates faulty institutions; tests only.
    `privacy_rng` replaces the OS's entropy for DP sampling and noise, to replay a run; tests only.
    `isolation` keeps TFF's worker off the network (default: loopback, refused where impossible).
    """
    runtime.ensure_context(isolation)
    mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    tf.keras.utils.set_random_seed(spec.seed)
    with_faults = bool(update_factors)
    process = build_learning_process(spec, mean, std, len(clients), with_faults=with_faults)
    record_level = spec.privacy if isinstance(spec.privacy, RecordLevelPrivacy) else None
    if record_level is not None:
        unknown = sorted({c.institution for c in clients} - set(record_level.noise_multipliers))
        if unknown:
            raise ValueError(f"record-level privacy has no noise multiplier for {unknown}")
        rng = privacy_rng or secure_rng()
    evaluation = None
    if validation:
        evaluation = tff.learning.algorithms.build_fed_eval(_model_fn(spec, mean, std))
        eval_state = evaluation.initialize()
        validation_data = [client_dataset(c.x, c.y, batch_size=1024, epochs=1, seed=0) for c in validation]

    state = process.initialize()
    shapes = [tuple(w.shape) for w in process.get_model_weights(state).trainable]
    bytes_per_client = update_bytes(spec.aggregation, shapes)
    history: list[RoundMetrics] = []
    best_weights = [np.asarray(w) for w in process.get_model_weights(state).trainable]
    best_loss, best_round, stale = np.inf, 0, 0
    checkpoints = None
    if checkpoint_dir is not None:
        checkpoints = Checkpoints(checkpoint_dir, {
            "spec": asdict(spec), "mean": mean.tolist(), "std": std.tolist(),
            "clients": [(c.institution, len(c.y)) for c in clients],
            "validation": [(c.institution, len(c.y)) for c in validation or []],
            "update_factors": update_factors or {},
        })
        saved = checkpoints.load(_program_state(state, [], best_weights, best_loss, best_round, stale))
        if saved is not None:
            state = saved["learning"]
            history = _history(saved["history"])
            best_weights = [np.asarray(w) for w in saved["best_weights"]]
            best_loss, best_round, stale = float(saved["best"][0]), int(saved["best"][1]), int(saved["best"][2])
    resumed_from = len(history)
    for m in history:
        if on_round is not None:
            on_round(m)

    stopped_early = spec.patience is not None and stale >= spec.patience
    round_num = len(history)
    while round_num < spec.rounds and not stopped_early:
        round_num += 1
        chosen = sample_clients(len(clients), spec.clients_per_round, spec.seed, round_num)
        datasets = []
        for i in chosen:
            c = clients[i]
            if record_level is not None:
                noise_stddev = record_level.noise_multipliers[c.institution] * record_level.clip_norm
                batches = poisson_steps(c.x, c.y, batch_size=spec.batch_size, noise_stddev=noise_stddev, rng=rng,
                                        steps=steps_per_round(len(c.y), spec.batch_size, spec.local_epochs))
            else:
                batches = client_dataset(c.x, c.y, batch_size=spec.batch_size, epochs=spec.local_epochs,
                                         seed=_client_seed(spec.seed, round_num, i))
            if with_faults:
                batches = faulty_client_data(batches, update_factors.get(c.institution, HONEST))
            datasets.append(batches)
        output = process.next(state, datasets)
        state = output.state
        weights = process.get_model_weights(state)
        validation_loss = validation_auc = float("nan")
        if evaluation is not None:
            eval_state = evaluation.set_model_weights(eval_state, weights)
            eval_metrics = evaluation.next(eval_state, validation_data).metrics
            current = eval_metrics["client_work"]["eval"]["current_round_metrics"]
            validation_loss, validation_auc = float(current["loss"]), float(current["auc"])
        train_metrics = output.metrics["client_work"]["train"]
        aggregator = output.metrics["aggregator"]
        metrics = RoundMetrics(
            round=round_num,
            loss=float(train_metrics.get("loss", np.nan)),
            auc=float(train_metrics.get("auc", np.nan)),
            # Withheld under client-level DP: the examples the sampled institutions hold (public counts).
            num_examples=int(train_metrics.get("num_examples", spec.local_epochs * sum(len(clients[i].y)
                                                                                       for i in chosen))),
            institutions=len(chosen),
            validation_loss=validation_loss,
            validation_auc=validation_auc,
            client_update_norm=_find(aggregator, "average_client_norm"),
            server_update_norm=_find(aggregator, "server_update_norm"),
            non_finite_updates=int(np.nan_to_num(_find(aggregator, "non_finite_count"))),
            bytes_sent=bytes_per_client * len(chosen),
        )
        history.append(metrics)
        if evaluation is None or validation_loss < best_loss - spec.min_delta:
            best_loss, best_round, stale = validation_loss, round_num, 0
            best_weights = [np.asarray(w) for w in weights.trainable]
        else:
            stale += 1
        stopped_early = spec.patience is not None and stale >= spec.patience
        if checkpoints is not None:
            checkpoints.save(_program_state(state, history, best_weights, best_loss, best_round, stale), round_num)
        if on_round is not None:
            on_round(metrics)
    trained = collections.Counter(clients[i].institution for r in range(1, len(history) + 1)
                                  for i in sample_clients(len(clients), spec.clients_per_round, spec.seed, r))
    return TrainingResult(weights=best_weights, rounds=history, best_round=best_round, stopped_early=stopped_early,
                          resumed_from_round=resumed_from,
                          rounds_trained={c.institution: trained.get(c.institution, 0) for c in clients})
