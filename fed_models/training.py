"""Federated training with TFF: FedAvg, FedProx and adaptive server optimizers over institutions.

Each round a seeded sample of institutions trains locally from the global model (TFF client work,
run where each institution's rows are: in this process in simulation, at its node across silos);
the coordinator aggregates their updates with TFF's aggregator (robust by default) and applies them
with its finalizer (the server optimizer); every institution then scores the new model on its
validation split, and only the summed metrics come back. The best round by federated validation loss
is the one exported. Program state is checkpointed every round so a killed run resumes where it stopped.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fed_models import runtime
from fed_models.accounting import steps_per_round
from fed_models.aggregation import AggregationKind, build_aggregator, build_client_dp_aggregator, update_bytes
from fed_models.checkpoints import Checkpoints
from fed_models.client_data import client_dataset, element_spec
from fed_models.dp_sgd import build_dp_sgd_client_work, poisson_steps, secure_rng
from fed_models.faults import HONEST, faulty_client_data, with_update_faults
from fed_models.fedprox import ProximalSGD
from fed_models.keras_models import ModelSpec, WeightedBinaryCrossentropy, build_model
from fed_models.schedule import LATE_APPLIED, LATE_DROPPED, MISSED, ON_TIME, PARTICIPATION, Schedule, sample_clients
from hostguard.loopback import Isolation

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
    schedule: Schedule = field(default_factory=Schedule)


@dataclass(frozen=True)
class RoundMetrics:
    """One round: training metrics of the sampled institutions, federated validation, updates.

    Losses are the training objective (with the positive-class weight); validation figures
    are summed over every institution's validation split (NaN when there is none). Update norms
    are of the updates as averaged (after robust zeroing and clipping); bytes are what the
    sampled institutions sent. Under differential privacy, what would fall outside the guarantee
    is not measured (NaN): training-set loss and AUC, and with client-level DP the update norms.
    Under a deadline or a buffer: updates applied on time and late (their mean staleness, in model
    versions), late ones dropped, institutions that missed the deadline; validation is NaN when an
    institution did not validate in time. `seconds`: the round's wall time at the coordinator.
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
    late_applied: int = 0
    late_dropped: int = 0
    missed_deadline: int = 0
    staleness: float = 0.0
    seconds: float = field(default=float("nan"), compare=False)  # wall time: not what makes two rounds the same


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
    lost: dict[str, str] = field(default_factory=dict)  # institutions left out mid-run, and why
    charged: dict[str, tuple[float, float]] = field(default_factory=dict)  # cross-silo: each node's (epsilon, delta)
    # institution -> one count vector per round (ON_TIME, LATE_APPLIED, LATE_DROPPED, MISSED)
    participation: dict[str, list[list[int]]] = field(default_factory=dict)


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


def _summed_metrics(metric_finalizers):
    """A metrics aggregator that sums the institutions' unfinalized metrics and does not finalize them: the
    coordinator adds up the sums of every call (one per institution, across silos) and finalizes once,
    which is TFF's own sum-then-finalize with the boundary between institutions and coordinator inside it."""
    del metric_finalizers

    @tff.federated_computation
    def summed(client_metrics):
        return tff.federated_sum(client_metrics)

    return summed


def _withheld_metrics(metric_finalizers):
    """A metrics aggregator that releases nothing (the institutions' metrics stay where they are)."""

    @tff.federated_computation
    def withhold(client_metrics):
        del client_metrics
        return tff.federated_value(collections.OrderedDict(), tff.SERVER)

    return withhold


def _client_work(spec: TrainingSpec, model_fn, weights_type, mean: np.ndarray, std: np.ndarray):
    """Local training: SGD, proximal SGD for FedProx, DP-SGD under record-level privacy."""
    if isinstance(spec.privacy, RecordLevelPrivacy):
        if spec.algorithm == "fedprox":
            raise ValueError("record-level privacy trains locally with DP-SGD; it does not combine with fedprox")
        return build_dp_sgd_client_work(
            lambda: build_model(spec.model, mean, std),
            WeightedBinaryCrossentropy(spec.positive_weight).call,
            weights_type,
            learning_rate=spec.client_learning_rate,
            clip_norm=spec.privacy.clip_norm,
            batch_size=spec.batch_size,
            n_features=len(mean),
        )
    if spec.algorithm == "fedprox":
        optimizer = ProximalSGD(spec.client_learning_rate, spec.proximal_strength)
    else:
        optimizer = tff.learning.optimizers.build_sgdm(spec.client_learning_rate)
    if isinstance(spec.privacy, ClientLevelPrivacy):
        # Unweighted (a weight would be a second, unbounded channel), and no training-set metrics:
        # they would leave the institutions without noise.
        return tff.learning.templates.build_model_delta_client_work(
            model_fn,
            optimizer,
            tff.learning.ClientWeighting.UNIFORM,
            metrics_aggregator=_withheld_metrics,
            loop_implementation=tff.learning.LoopImplementation.DATASET_REDUCE,
        )
    return tff.learning.templates.build_model_delta_client_work(
        model_fn,
        optimizer,
        tff.learning.ClientWeighting.NUM_EXAMPLES,
        metrics_aggregator=_summed_metrics,
        loop_implementation=tff.learning.LoopImplementation.DATASET_REDUCE,
    )


def _aggregator(spec: TrainingSpec, n_clients: int) -> tff.aggregators.WeightedAggregationFactory:
    """How updates combine: the configured aggregation, or the client-level DP mechanism."""
    if isinstance(spec.privacy, ClientLevelPrivacy):
        return build_client_dp_aggregator(
            noise_multiplier=spec.privacy.noise_multiplier,
            clip_norm=spec.privacy.clip_norm,
            clients_per_round=min(spec.clients_per_round or n_clients, n_clients),
            adaptive=spec.privacy.adaptive_clipping,
        )
    return build_aggregator(spec.aggregation)


def _evaluation(model_fn, weights_type, n_features: int):
    """Federated validation: each institution runs the model over its rows and reports its unfinalized
    metrics (sums and counts); the computation returns their sum (the coordinator finalizes)."""
    data_type = tff.SequenceType(
        tff.StructWithPythonType(
            [
                (name, tff.TensorType(spec.dtype.as_numpy_dtype, spec.shape.as_list()))
                for name, spec in element_spec(n_features).items()
            ],
            collections.OrderedDict,
        )
    )

    def evaluate_locally(model, weights, dataset):
        tf.nest.map_structure(lambda v, t: v.assign(t), tff.learning.models.ModelWeights.from_model(model), weights)

        def run(count, batch):
            model.forward_pass(batch, training=False)
            return count + 1

        dataset.reduce(tf.constant(0, tf.int64), run)
        return model.report_local_unfinalized_metrics()

    @tff.tensorflow.computation(weights_type, data_type)
    def local_metrics(weights, dataset):
        # A tf.function orders the assignment, the passes and the final read, as TFF's own evaluation does.
        return tf.function(evaluate_locally)(model_fn(), weights, dataset)

    @tff.federated_computation(tff.FederatedType(weights_type, tff.SERVER), tff.FederatedType(data_type, tff.CLIENTS))
    def evaluate(weights, data):
        return tff.federated_sum(tff.federated_map(local_metrics, (tff.federated_broadcast(weights), data)))

    return evaluate


@dataclass
class Stages:
    """TFF's learning-process stages of one training, built once: client work runs where an institution's
    rows are; the aggregator (robust, compressed or client-level DP) and the finalizer (the server
    optimizer) run at the coordinator, on the updates the institutions return. Metrics come back as sums
    (unfinalized) and are finalized once, at the coordinator, with the model's own finalizers."""

    spec: TrainingSpec
    mean: np.ndarray
    std: np.ndarray
    initial_weights: object
    client_work: tff.learning.templates.ClientWorkProcess
    aggregator: tff.templates.AggregationProcess
    finalizer: tff.learning.templates.FinalizerProcess
    evaluate: object
    finalize_training: object  # summed training metrics -> finalized (None when nothing is released)
    finalize_validation: object


def build_stages(
    spec: TrainingSpec, mean: np.ndarray, std: np.ndarray, n_clients: int, with_faults: bool = False
) -> Stages:
    """The stages of `spec` over `n_clients` institutions (`with_faults`: clients multiply their update by a
    factor, for robustness drills)."""
    if spec.algorithm == "fedprox" and spec.proximal_strength <= 0:
        raise ValueError("fedprox needs a proximal_strength > 0")
    mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    tf.keras.utils.set_random_seed(spec.seed)
    model_fn = _model_fn(spec, mean, std)

    @tff.tensorflow.computation()
    def initial_weights():
        return tff.learning.models.ModelWeights.from_model(model_fn())

    weights_type = initial_weights.type_signature.result
    client_work = _client_work(spec, model_fn, weights_type, mean, std)
    if with_faults:
        client_work = with_update_faults(client_work)
    aggregator = _aggregator(spec, n_clients).create(weights_type.trainable, tff.TensorType(np.float32))
    finalizer = tff.learning.templates.build_apply_optimizer_finalizer(_server_optimizer(spec), weights_type)
    evaluate = _evaluation(model_fn, weights_type, len(mean))
    training_type = client_work.next.type_signature.result.measurements.member
    return Stages(
        spec,
        mean,
        std,
        initial_weights(),
        client_work,
        aggregator,
        finalizer,
        evaluate,
        _finalizing(model_fn, training_type.train)
        if "train" in dict(tff.structure.iter_elements(training_type))
        else None,
        _finalizing(model_fn, evaluate.type_signature.result.member),
    )


def _finalizing(model_fn, unfinalized_type):
    """A computation that finalizes summed metrics of `unfinalized_type` with the model's finalizers (Keras
    metrics are rebuilt from their state, which needs a traced computation); counts pass through."""
    names = [name for name, _ in tff.structure.iter_elements(unfinalized_type)]

    @tff.tensorflow.computation(unfinalized_type)
    def finalize(metrics):
        finalizers = model_fn().metric_finalizers()
        finalized = collections.OrderedDict()
        for name in names:
            value = metrics[name]
            leaves = tff.structure.flatten(value) if isinstance(value, tff.structure.Struct) else tf.nest.flatten(value)
            finalized[name] = finalizers[name](list(leaves)) if name in finalizers else value
        return finalized

    return finalize


@dataclass(frozen=True)
class ClientUpdate:
    """What one institution sends back from one round: its update (weight delta), its weight, and its
    training metrics as unfinalized sums (nothing when privacy withholds them)."""

    institution: str
    update: list[np.ndarray]
    weight: float
    metrics: dict
    institutions: int = 1  # more than 1: a secure sum of several institutions' updates (already their mean)
    non_finite: int = 0  # non-finite updates the institutions zeroed before a secure sum
    started_from: int | None = None  # the model version (rounds applied) it trained from; None: this round's
    # A secure sum: (institution, staleness) of each update in it, each already discounted at its node.
    members: tuple[tuple[str, int], ...] = ()


def _numpy(structure):
    return tf.nest.map_structure(np.asarray, structure)


def client_round(
    stages: Stages,
    client: ClientData,
    weights,
    *,
    seed: int,
    rng: np.random.Generator | None = None,
    update_factor: float | None = None,
) -> ClientUpdate:
    """One institution's client work in one round, where its rows are: from the global `weights`, SGD (or
    proximal SGD, or DP-SGD with noise drawn from `rng`) over its fit rows shuffled by `seed`."""
    spec = stages.spec
    if isinstance(spec.privacy, RecordLevelPrivacy):
        noise = spec.privacy.noise_multipliers[client.institution] * spec.privacy.clip_norm
        batches = poisson_steps(
            client.x,
            client.y,
            batch_size=spec.batch_size,
            noise_stddev=noise,
            rng=rng,
            steps=steps_per_round(len(client.y), spec.batch_size, spec.local_epochs),
        )
    else:
        batches = client_dataset(client.x, client.y, batch_size=spec.batch_size, epochs=spec.local_epochs, seed=seed)
    if update_factor is not None:
        batches = faulty_client_data(batches, update_factor)
    output = stages.client_work.next(stages.client_work.initialize(), [weights], [batches])
    [result] = output.result
    return ClientUpdate(
        client.institution,
        [np.asarray(u) for u in result.update],
        float(result.update_weight),
        _numpy(output.measurements.get("train", {})),
    )


def validation_metrics(stages: Stages, client: ClientData, weights) -> dict:
    """One institution's federated-validation metrics for `weights`, as unfinalized sums."""
    return _numpy(stages.evaluate(weights, [client_dataset(client.x, client.y, batch_size=1024, epochs=1, seed=0)]))


def add_metrics(sums: list[dict]) -> dict:
    """Unfinalized metrics of several institutions added up (what TFF's federated_sum does)."""
    present = [s for s in sums if s]
    if not present:
        return {}
    return tf.nest.map_structure(lambda *values: np.sum(np.stack([np.asarray(v) for v in values]), axis=0), *present)


def finalize_metrics(finalize, sums: dict) -> dict[str, float]:
    """Summed unfinalized metrics -> finalized values (`finalize`: one of the stages' finalizing computations)."""
    if not sums:
        return {}
    return {name: float(np.asarray(value).reshape(-1)[0]) for name, value in finalize(sums).items()}


class Institutions(Protocol):
    """Where each institution's client work and validation run: in this process (simulation) or at the
    institution's node (cross-silo). Indices follow `names`; `lost` names institutions left out mid-run;
    `missed` those asked in the last round whose update had not arrived when it closed (deadline, buffer);
    `dropped` those whose late update the runner itself dropped in it (secure sums)."""

    names: list[str]
    fit_rows: list[int]
    lost: dict[str, str]
    missed: list[str]
    dropped: list[str]
    charged: dict[str, tuple[float, float]]  # the (epsilon, delta) each institution's own ledger charged (nodes)

    def prepare(self, stages: Stages) -> None: ...

    def train_round(self, stages: Stages, round_num: int, weights, chosen: list[int]) -> list[ClientUpdate]:
        """The updates for the server step after `round_num - 1` steps: this round's, and under a deadline or
        a buffer also earlier rounds' that arrived late (their `started_from` says which model they trained
        from); nothing when no institution can train any more."""
        ...

    def validate(self, stages: Stages, round_num: int, weights) -> list[tuple[int, list[dict] | None]]:
        """Ask every institution to validate round `round_num`'s `weights`; return the rounds whose validation is
        complete, in order, each with every institution's validation sums (None: not validated by all, so not
        compared). Synchronous: this round's, at once. Under a deadline or a buffer validation runs beside the
        training, a round at a time: a round asked while one is out is not validated, and results come later."""
        ...

    def last_validations(self) -> list[tuple[int, list[dict] | None]]:
        """The validations still out when the training ended, once they are in."""
        ...

    def trained_rounds(self, rounds_run: int) -> dict[str, int]: ...

    def finish(self) -> None:
        """The training ended: work still running at an institution is no longer waited for."""
        ...


def client_seed(seed: int, round_num: int, client_index: int) -> int:
    """The shuffle seed of one institution in one round: the same wherever its client work runs."""
    return (seed * 1_000_003 + round_num * 1_009 + client_index) % (2**31 - 1)


class LocalInstitutions:
    """Simulation: every institution's rows in this process, each trained by `client_round` in turn."""

    def __init__(
        self,
        clients: Sequence[ClientData],
        validation: Sequence[ClientData] | None = None,
        update_factors: dict[str, float] | None = None,
        privacy_rng: np.random.Generator | None = None,
    ):
        self.clients, self.validation = list(clients), list(validation or [])
        self.names = [c.institution for c in self.clients]
        self.fit_rows = [len(c.y) for c in self.clients]
        self.update_factors = update_factors or {}
        self.rng = privacy_rng
        self.lost: dict[str, str] = {}
        self.missed: list[str] = []  # every institution trains in turn here: none is ever late
        self.dropped: list[str] = []
        self.charged: dict[str, tuple[float, float]] = {}  # no ledger but the coordinator's in simulation
        self.spec: TrainingSpec | None = None

    def finish(self) -> None:
        pass

    def prepare(self, stages: Stages) -> None:
        self.spec = stages.spec

    def trained_rounds(self, rounds_run: int) -> dict[str, int]:
        """The rounds each institution trained in, from the seeded sampling schedule (resumed rounds too)."""
        n = len(self.names)
        counts = collections.Counter(
            self.names[i]
            for r in range(1, rounds_run + 1)
            for i in sample_clients(n, self.spec.clients_per_round, self.spec.seed, r)
        )
        return {name: counts.get(name, 0) for name in self.names}

    def train_round(self, stages: Stages, round_num: int, weights, chosen: list[int]) -> list[ClientUpdate]:
        if isinstance(stages.spec.privacy, RecordLevelPrivacy) and self.rng is None:
            self.rng = secure_rng()
        return [
            client_round(
                stages,
                self.clients[i],
                weights,
                seed=client_seed(stages.spec.seed, round_num, i),
                rng=self.rng,
                update_factor=self.update_factors.get(self.clients[i].institution, HONEST)
                if self.update_factors
                else None,
            )
            for i in chosen
        ]

    def validate(self, stages: Stages, round_num: int, weights) -> list[tuple[int, list[dict] | None]]:
        return [(round_num, [validation_metrics(stages, client, weights) for client in self.validation])]

    def last_validations(self) -> list[tuple[int, list[dict] | None]]:
        return []


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


def _program_state(
    weights,
    aggregator_state,
    finalizer_state,
    history: list[RoundMetrics],
    best_weights,
    best_loss: float,
    best_round: int,
    stale: int,
    participation: np.ndarray,
):
    table = np.array([[float(getattr(m, f)) for f in _NUMERIC_FIELDS] for m in history], dtype=np.float64)
    return collections.OrderedDict(
        weights=weights,
        aggregator=aggregator_state,
        finalizer=finalizer_state,
        history=table.reshape(len(history), len(_NUMERIC_FIELDS)),
        best_weights=[np.asarray(w) for w in best_weights],
        best=np.array([best_loss, best_round, stale], dtype=np.float64),
        participation=np.asarray(participation, dtype=np.int64),
    )


def _history(table: np.ndarray) -> list[RoundMetrics]:
    types = {f.name: f.type for f in fields(RoundMetrics)}
    return [
        RoundMetrics(
            **{
                name: (int(v) if types[name] == "int" else float(v))
                for name, v in zip(_NUMERIC_FIELDS, row, strict=True)
            }
        )
        for row in np.asarray(table).reshape(-1, len(_NUMERIC_FIELDS))
    ]


def _examples(spec: TrainingSpec, institutions: Institutions, updates: list[ClientUpdate], chosen: list[int]) -> int:
    """The examples behind a round's updates: each named institution's fit rows (a secure sum names none: then
    the sampled institutions')."""
    index = {name: i for i, name in enumerate(institutions.names)}
    named = [index[u.institution] for u in updates if u.institution in index]
    return spec.local_epochs * sum(institutions.fit_rows[i] for i in (named if len(named) == len(updates) else chosen))


def train(
    clients: Sequence[ClientData] | Institutions,
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
    """Train `spec` over the institutions; return the best round's weights and every round's metrics.

    `clients` are the institutions' fit rows (simulation: their client work runs here) or an `Institutions`
    whose client work runs elsewhere (their nodes). `validation` (simulation: one split per institution)
    drives early stopping and the best-round choice; without it the last round's weights are returned.
    `checkpoint_dir` makes the run resumable. `update_factors` (institution -> factor) simulates faulty
    institutions; tests only. `privacy_rng` replaces the OS's entropy for DP sampling and noise, to replay
    a run; tests only. `isolation` keeps TFF's worker off the network (default: loopback, refused where
    impossible).
    """
    runtime.ensure_context(isolation)
    institutions = (
        clients
        if hasattr(clients, "train_round")
        else LocalInstitutions(clients, validation, update_factors, privacy_rng)
    )
    mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    n = len(institutions.names)
    if isinstance(spec.privacy, RecordLevelPrivacy):
        unknown = sorted(set(institutions.names) - set(spec.privacy.noise_multipliers))
        if unknown:
            raise ValueError(f"record-level privacy has no noise multiplier for {unknown}")
    stages = build_stages(spec, mean, std, n, with_faults=bool(update_factors))
    institutions.prepare(stages)
    weights = stages.initial_weights
    aggregator_state, finalizer_state = stages.aggregator.initialize(), stages.finalizer.initialize()
    bytes_per_client = update_bytes(spec.aggregation, [tuple(np.shape(w)) for w in weights.trainable])
    history: list[RoundMetrics] = []
    best_weights = [np.asarray(w) for w in weights.trainable]
    best_loss, best_round, stale = np.inf, 0, 0
    participation = np.zeros((0, n, len(PARTICIPATION)), dtype=np.int64)
    checkpoints = None
    if checkpoint_dir is not None:
        checkpoints = Checkpoints(
            checkpoint_dir,
            {
                "spec": asdict(spec),
                "mean": mean.tolist(),
                "std": std.tolist(),
                "clients": list(zip(institutions.names, institutions.fit_rows, strict=True)),
                "update_factors": update_factors or {},
            },
        )
        saved = checkpoints.load(
            _program_state(
                weights,
                aggregator_state,
                finalizer_state,
                [],
                best_weights,
                best_loss,
                best_round,
                stale,
                participation,
            )
        )
        if saved is not None:
            weights, aggregator_state, finalizer_state = saved["weights"], saved["aggregator"], saved["finalizer"]
            history = _history(saved["history"])
            best_weights = [np.asarray(w) for w in saved["best_weights"]]
            best_loss, best_round, stale = float(saved["best"][0]), int(saved["best"][1]), int(saved["best"][2])
            participation = np.asarray(saved["participation"], dtype=np.int64).reshape(-1, n, len(PARTICIPATION))
    resumed_from = len(history)
    for m in history:
        if on_round is not None:
            on_round(m)

    schedule = spec.schedule
    stopped_early = spec.patience is not None and stale >= spec.patience
    round_num = len(history)
    left_out = frozenset(institutions.lost)  # validation losses compare only over the same institutions
    index = {name: i for i, name in enumerate(institutions.names)}
    candidates: dict[int, list[np.ndarray]] = {}  # weights of rounds whose validation is still out

    def judge(validated_round: int, checked: list[dict] | None) -> None:
        """A round's federated validation, once every institution's is in (None: it was not validated by all,
        and is not compared): its figures into its metrics, and the best round and early stopping updated."""
        nonlocal best_loss, best_round, best_weights, stale
        weights_of_round = candidates.pop(validated_round, None)
        if checked is None or weights_of_round is None:
            return
        if checked:
            scores = finalize_metrics(stages.finalize_validation, add_metrics(checked))
            at = validated_round - 1
            history[at] = replace(history[at], validation_loss=scores["loss"], validation_auc=scores["auc"])
        loss = history[validated_round - 1].validation_loss
        if not checked or loss < best_loss - spec.min_delta:
            best_loss, best_round, stale, best_weights = loss, validated_round, 0, weights_of_round
        else:
            stale += 1

    try:
        while round_num < spec.rounds and not stopped_early:
            started = time.perf_counter()
            chosen = sample_clients(n, spec.clients_per_round, spec.seed, round_num + 1)
            arrived = institutions.train_round(stages, round_num + 1, weights, chosen)
            if not arrived:  # every institution trained all the rounds it agreed to (a buffer never fills again)
                break
            round_num += 1
            counts = np.zeros((n, len(PARTICIPATION)), dtype=np.int64)
            updates, staleness = [], []
            for u in arrived:
                if u.members:  # a secure sum: its members' staleness was discounted at their nodes
                    for name, age in u.members:
                        counts[index[name], ON_TIME if age <= 0 else LATE_APPLIED] += 1
                        staleness.extend([age] if age > 0 else [])
                    updates.append(u)
                    continue
                age = 0 if u.started_from is None else round_num - 1 - u.started_from
                kind = ON_TIME if age <= 0 else (LATE_APPLIED if schedule.applies(age) else LATE_DROPPED)
                if u.institution in index:
                    counts[index[u.institution], kind] += 1
                if kind == LATE_DROPPED:
                    continue
                if age > 0:
                    staleness.append(age)
                    u = replace(u, weight=u.weight * schedule.discount(age))
                updates.append(u)
            for name in institutions.missed:
                counts[index[name], MISSED] += 1
            for name in institutions.dropped:
                counts[index[name], LATE_DROPPED] += 1
            participation = np.concatenate([participation, counts[None]])
            if updates:
                aggregated = stages.aggregator.next(
                    aggregator_state, [u.update for u in updates], [np.float32(u.weight) for u in updates]
                )
                aggregator_state = aggregated.state
                finalized = stages.finalizer.next(finalizer_state, weights, aggregated.result)
                finalizer_state, weights = finalized.state, finalized.result
                aggregator = aggregated.measurements
            else:  # only late updates, all dropped: the model stays as it was
                aggregator = {}
            candidates[round_num] = [np.asarray(w) for w in weights.trainable]
            validated = institutions.validate(stages, round_num, weights)
            if frozenset(institutions.lost) != left_out:  # an institution was left out: later losses are over
                left_out = frozenset(institutions.lost)  # fewer institutions, not comparable with the rounds before
                best_loss, stale = np.inf, 0
            train_metrics = finalize_metrics(stages.finalize_training, add_metrics([u.metrics for u in updates]))
            metrics = RoundMetrics(
                round=round_num,
                loss=float(train_metrics.get("loss", np.nan)),
                auc=float(train_metrics.get("auc", np.nan)),
                # Withheld under client-level DP: the examples of the updates applied (public counts).
                num_examples=int(train_metrics.get("num_examples", _examples(spec, institutions, updates, chosen))),
                institutions=len({u.institution for u in updates if u.institutions == 1})
                + sum(u.institutions for u in updates if u.institutions > 1),
                validation_loss=float("nan"),  # set by `judge` once every institution validated it
                validation_auc=float("nan"),
                client_update_norm=_find(aggregator, "average_client_norm"),
                server_update_norm=_find(aggregator, "server_update_norm"),
                non_finite_updates=int(np.nan_to_num(_find(aggregator, "non_finite_count")))
                + sum(u.non_finite for u in updates),
                bytes_sent=bytes_per_client * sum(u.institutions for u in arrived),
                late_applied=int(counts[:, LATE_APPLIED].sum()),
                late_dropped=int(counts[:, LATE_DROPPED].sum()),
                missed_deadline=len(institutions.missed),
                staleness=float(np.mean(staleness)) if staleness else 0.0,
                seconds=time.perf_counter() - started,
            )
            history.append(metrics)
            for validated_round, checked in validated:
                judge(validated_round, checked)
            stopped_early = spec.patience is not None and stale >= spec.patience
            if checkpoints is not None:
                checkpoints.save(
                    _program_state(
                        weights,
                        aggregator_state,
                        finalizer_state,
                        history,
                        best_weights,
                        best_loss,
                        best_round,
                        stale,
                        participation,
                    ),
                    round_num,
                )
            if on_round is not None:
                on_round(history[-1])
        for validated_round, checked in institutions.last_validations():  # those still out when training ended
            judge(validated_round, checked)
    finally:
        institutions.finish()
    if best_round == 0 and history:  # no round was ever validated completely: the last one is exported
        best_round, best_weights = round_num, [np.asarray(w) for w in weights.trainable]
    return TrainingResult(
        weights=best_weights,
        rounds=history,
        best_round=best_round,
        stopped_early=stopped_early,
        resumed_from_round=resumed_from,
        rounds_trained=institutions.trained_rounds(len(history)),
        lost=dict(institutions.lost),
        charged=dict(institutions.charged),
        participation={name: participation[:, i, :].tolist() for i, name in enumerate(institutions.names)},
    )


def spec_as_dict(spec: TrainingSpec) -> dict:
    """A training spec as plain values (what a node is sent; it rebuilds the spec with `spec_from_dict`)."""
    plain = asdict(spec)
    privacy = spec.privacy
    plain["privacy"] = (
        None
        if privacy is None
        else {"kind": "record_level" if isinstance(privacy, RecordLevelPrivacy) else "client_level", **asdict(privacy)}
    )
    return plain


def spec_from_dict(plain: dict) -> TrainingSpec:
    """The spec `spec_as_dict` wrote: only fedrisk's own types, so a node builds its own computations."""
    plain = dict(plain)
    model = plain.pop("model")
    privacy = plain.pop("privacy")
    schedule = Schedule(**plain.pop("schedule", {}))
    if privacy is not None:  # read, never changed: the caller's request stays as it was
        settings = {k: v for k, v in privacy.items() if k != "kind"}
        privacy = (
            RecordLevelPrivacy(**settings) if privacy["kind"] == "record_level" else ClientLevelPrivacy(**settings)
        )
    return TrainingSpec(
        model=ModelSpec(**{**model, "hidden_units": tuple(model["hidden_units"])}),
        privacy=privacy,
        schedule=schedule,
        **plain,
    )


def weights_as_lists(weights) -> dict[str, list[np.ndarray]]:
    """TFF model weights as plain arrays (trainable, non-trainable)."""
    return {
        "trainable": [np.asarray(w) for w in weights.trainable],
        "non_trainable": [np.asarray(w) for w in weights.non_trainable],
    }


def weights_from_lists(plain: dict):
    return tff.learning.models.ModelWeights(
        trainable=list(plain["trainable"]), non_trainable=list(plain["non_trainable"])
    )
