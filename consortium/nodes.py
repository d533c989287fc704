"""The coordinator's side of cross-silo: a consortium of institutions' nodes (consortium.local's interface)
and the training runner that sends each round to them (fed_models.training's Institutions).

The coordinator never has a path to an institution's data: it sends settings, the feature layout, global
weights and models, and gets back reports, aggregates, updates and metrics. Every call is mutual TLS with
the consortium's CA; the node must present the certificate of the institution it is configured as. Calls
carry deadlines; a node that fails a round is asked once more (re-prepared if it restarted), then left
out while the quorum holds, or the run stops cleanly (it resumes from its checkpoint on the next run).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import queue
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import grpc
import numpy as np

from consortium.protocol import TrainingStopped
from errors import FedriskError
from institution.evaluation import InstitutionEvaluation
from institution.monitoring import MonitoredExtract, MonitoringCounts
from institution.statistics import FeatureSpace, LocalStatistics
from institution.validation import LEFT_OUT, REFUSED_AT_START, ValidationReport
from node import wire
from node.messages import (
    OPERATIONS,
    BufferedRound,
    DevelopmentCounts,
    Evaluate,
    GroupCountsSum,
    Monitor,
    Prepare,
    Request,
    SchemaRef,
    SplitRef,
    Statistics,
    TrainRound,
    TrainTrees,
    TreeProgress,
    Validate,
    ValidateRound,
)
from node.runs import round_weights_digest
from node.server import SERVICE, message_options
from riskmodel.model import ENGINE_FILES, MANIFEST

MAX_MESSAGE_MB = 64
START = "the start of the training"  # Prepare: a node checks the training against its policy
MIN_SUMMED = 3  # the fewest inputs in any secure sum (runconfig's secure_aggregation.min_institutions floor)
_channels: dict[tuple, grpc.Channel] = {}
_channels_lock = threading.Lock()


class NodeError(FedriskError, RuntimeError):
    """A node that could not be reached, refused, or failed; the message names the institution and address."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code

    @property
    def refusal(self) -> bool:
        """The node refused (its policy or its data): asked again, it answers the same."""
        return self.code == grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class NodeHandle:
    institution: str
    address: str


@dataclass(frozen=True)
class Tls:
    """The coordinator's PEM files: the consortium CA, its certificate and key."""

    ca: str
    cert: str
    key: str


def _channel(handle: NodeHandle, tls: Tls) -> grpc.Channel:
    key = (handle, tls)
    with _channels_lock:
        if key not in _channels:
            credentials = grpc.ssl_channel_credentials(
                Path(tls.ca).read_bytes(), Path(tls.key).read_bytes(), Path(tls.cert).read_bytes()
            )
            # The node must hold the certificate of the institution it is configured as. A node that was down
            # is dialled again within seconds, not after gRPC's default backoff of up to two minutes.
            options = [
                ("grpc.ssl_target_name_override", handle.institution),
                *message_options(MAX_MESSAGE_MB),
                ("grpc.initial_reconnect_backoff_ms", 500),
                ("grpc.max_reconnect_backoff_ms", 5000),
            ]
            _channels[key] = grpc.secure_channel(handle.address, credentials, options=options)
        return _channels[key]


def call(handle: NodeHandle, tls: Tls, request: Request):
    """One request (node.messages) at one node; its answer, or NodeError with a sentence on any failure."""
    return send(handle, tls, request.operation, request.plain())


def send(handle: NodeHandle, tls: Tls, operation: str, plain: dict):
    """`plain` sent as `operation` as it is: what `call` does after typing; a test that plays a deviating
    coordinator sends what no typed request would hold."""
    method = _channel(handle, tls).unary_unary(f"/{SERVICE}/{operation}")
    try:
        return wire.decode(method(wire.encode(plain), timeout=OPERATIONS[operation].timeout))
    except grpc.RpcError as error:
        code, details = error.code(), (error.details() or "").strip()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            with _channels_lock:  # the next call dials afresh (a restarted node is reached at once)
                stale = _channels.pop((handle, tls), None)
            if stale is not None:
                stale.close()
            message = f"institution '{handle.institution}': unreachable at {handle.address}: {details or code.name}"
        else:
            message = f"institution '{handle.institution}' node at {handle.address}: {details or code.name}"
        raise NodeError(message, code) from None


def _in_parallel(indices: list[int], operation) -> dict[int, object]:
    """`operation(i)` for each index, one thread per node (each call mostly waits on its node)."""
    with ThreadPoolExecutor(max(1, len(indices))) as pool:
        return dict(zip(indices, pool.map(operation, indices), strict=True))


def _attempt(operation):
    """`operation()`, or the NodeError it raised."""
    try:
        return operation()
    except NodeError as error:
        return error


def _zip_model(directory: Path) -> np.ndarray:
    """An exported model's files (its manifest and engine file: data, no code) as bytes."""
    directory = Path(directory)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for name in (MANIFEST, *ENGINE_FILES):
            if (directory / name).exists():
                bundle.write(directory / name, name)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


@dataclass(frozen=True)
class NodeConsortium:
    """Cross-silo: each institution at its node. `digests` pins each admitted node to the extract it validated."""

    nodes: tuple[NodeHandle, ...]
    tls: Tls
    quorum: int = 1
    digests: tuple[tuple[str, str], ...] = ()
    rows: tuple[tuple[str, int], ...] = ()  # each admitted institution's row count (public: its validation report)
    server_host: str = "localhost"  # where the nodes reach this coordinator (XGBoost's federated server)
    trees_bind: str = ""  # the address the gate to XGBoost's federated server listens on ("": server_host's)
    secure_threshold: int = 0  # secure aggregation's t; 0: off (updates and statistics in the clear)
    clip_norm: float = 10.0  # under secure aggregation: the L2 bound each node clips its update to
    run_key: str = ""  # the training these nodes take part in (for_run): what Evaluate is tied to
    champion: str | None = None  # riskmodel.model.files_digest of the champion the run evaluates, named at the start
    cross_silo = True

    @property
    def extracts(self) -> tuple:
        """None: across silos this process reads no institution's file."""
        return ()

    def tree_data(self, space) -> list:
        raise TypeError("across silos each node's worker reads its own rows; tree_data is for simulation")

    def for_run(self, run_key: str, champion: Path | None) -> NodeConsortium:
        """The consortium for one training: its id, and the champion it will evaluate (named to each node when the
        training begins; a node scores no other model)."""
        from riskmodel.model import files_digest

        return replace(self, run_key=run_key, champion=files_digest(champion) if champion is not None else None)

    @property
    def secure(self) -> bool:
        return self.secure_threshold > 0

    def secure_tags(self) -> dict[str, str]:
        """The version tags that say its updates and statistics were added by secure aggregation, and how."""
        from node.secure import UPDATE_BITS

        return {
            "secure_aggregation": "true",
            "secure_aggregation.institutions": str(len(self.names)),
            "secure_aggregation.threshold": str(self.secure_threshold),
            "secure_aggregation.bit_width": str(UPDATE_BITS),
            "secure_aggregation.clip_norm": f"{self.clip_norm:g}",
        }

    @property
    def names(self) -> list[str]:
        return [n.institution for n in self.nodes]

    def encoding(self, spec):
        """A run's secure encoding, the same for every node: the clip norm, the admitted institutions, and a weight
        bound no institution's round reaches (its rows and a batch, times the local epochs)."""
        from node.secure import Encoding

        largest = max((rows for _, rows in self.rows), default=0)
        return Encoding(self.clip_norm, max(len(self.nodes), 3), float((largest + spec.batch_size) * spec.local_epochs))

    def node(self, institution: str) -> NodeHandle:
        return next(n for n in self.nodes if n.institution == institution)

    def digest(self, institution: str) -> str:
        return dict(self.digests)[institution]

    def validate(self, institution, schema, reference, expectations_dir) -> ValidationReport:
        handle = self.node(institution)
        try:
            answer = call(handle, self.tls, Validate(SchemaRef.of(schema), reference))
        except NodeError as error:  # unreachable or refusing: quarantined like a failed validation
            return ValidationReport(
                institution,
                f"node {handle.address}",
                schema.suite,
                passed=False,
                checks_evaluated=1,
                checks_failed=1,
                reasons=[str(error)],
            )
        report = ValidationReport(**answer["report"])
        if answer.get("data_docs_html"):  # the node's page, kept here for the run (no path into the node)
            page = Path(tempfile.mkdtemp(prefix="fedrisk-validation-page-")) / "validation.html"
            page.write_text(answer["data_docs_html"])
            report = replace(report, data_docs=str(page))
        return report

    def admit(self, reports: list[ValidationReport]) -> NodeConsortium:
        passed = {r.institution: r.digest for r in reports if r.passed}
        return replace(
            self,
            nodes=tuple(n for n in self.nodes if n.institution in passed),
            digests=tuple(passed.items()),
            rows=tuple((r.institution, r.rows) for r in reports if r.passed),
        )

    def statistics(self, institution, schema, features, split) -> LocalStatistics:
        result = call(
            self.node(institution),
            self.tls,
            Statistics(SchemaRef.of(schema), self.digest(institution), list(features), SplitRef.of(split)),
        )
        return LocalStatistics(**result)

    def secure_statistics(
        self, schema, features, split, kept: Path | None = None
    ) -> tuple[LocalStatistics, dict[str, int], str]:
        """The consortium's statistics as one secure sum over every admitted node (each must complete it):
        the summed statistics, each institution's row count (public, as in its validation report), and what
        completed. A node adds an input to one sum only, so the sum over the same extracts is kept under `kept`
        (a directory) and read back by later runs instead of being asked for again."""
        import json

        from institution.statistics import statistics_from_vector
        from node import secure
        from secagg.protocol import SecureAggregationError

        names = self.names
        base = {"schema": SchemaRef.of(schema), "features": list(features), "split": SplitRef.of(split)}
        kept_file = None
        if kept is not None:
            described = {"schema": asdict(base["schema"]), "features": base["features"], "split": asdict(base["split"])}
            key = hashlib.sha256(json.dumps({**described, "digests": sorted(self.digests)}, sort_keys=True).encode())
            kept_file = Path(kept) / f"{key.hexdigest()}.json"
            if kept_file.exists():
                plain = json.loads(kept_file.read_text())
                return (
                    LocalStatistics(**plain["statistics"]),
                    plain["counts"],
                    f"the secure sum of {plain['at']} over the same extracts (session {plain['session']}): each "
                    f"node adds an input to one sum only",
                )

        def each(indices, when, operation):
            results = _in_parallel(indices, lambda i: _attempt(lambda: operation(i)))
            failures = [r for r in results.values() if isinstance(r, NodeError)]
            if failures:
                raise NodeError(
                    f"{when}: " + "; ".join(str(f) for f in failures) + ": every admitted institution "
                    "must add its statistics; nothing was trained or registered"
                )
            return results

        def begin(i: int) -> tuple[str, Statistics]:
            return "statistics", Statistics(digest=self.digest(names[i]), **base)

        session = secure.new_session("statistics")
        try:
            result = secure.run_session(
                names,
                list(range(len(names))),
                session,
                {"sums": secure.SUMS},
                begin,
                each,
                lambda i, request: call(self.node(names[i]), self.tls, request),
                self.secure_threshold,
                "federated statistics",
            )
        except SecureAggregationError as error:
            raise NodeError(f"federated statistics: {error}") from None
        counts = {name: int(meta["count"]) for name, meta in result.meta.items()}
        summed = statistics_from_vector(result.sums["sums"], schema, features)
        if kept_file is not None:
            kept_file.parent.mkdir(parents=True, exist_ok=True)
            at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            kept_file.write_text(
                json.dumps({"statistics": asdict(summed), "counts": counts, "session": session, "at": at})
            )
        return summed, counts, result.describe(len(names), self.secure_threshold)

    def training(self, space: FeatureSpace, run_key: str, deltas: dict[str, float] | None = None):
        return NodeInstitutions(self, space, run_key, deltas or {})

    def tree_training(self, space: FeatureSpace, spec, run_key: str, server: str, on_round=None) -> dict:
        """Each node runs its institution's XGBoost worker against the coordinator's federated server at
        `server` (in parallel, until the training ends); rank 0's answer holds the trees. `on_round` gets each
        boosting round's federated validation figures as rank 0's node reports them (asked twice a second)."""

        def train(rank: int) -> dict:
            node = self.nodes[rank]
            request = TrainTrees(
                schema=SchemaRef.of(space.schema),
                digest=self.digest(node.institution),
                layout=space.layout.to_json(),
                split=SplitRef.of(space.split),
                spec=spec.as_dict(),
                run_key=run_key,
                world_size=len(self.nodes),
                rank=rank,
                server=server,
                mean=np.asarray(space.mean, dtype=np.float64),
                std=np.asarray(space.std, dtype=np.float64),
                champion=self.champion,
            )
            return call(node, self.tls, request)

        done, delivered = threading.Event(), []

        def follow() -> None:
            while True:
                finished = done.wait(0.5)
                try:
                    rounds = call(self.nodes[0], self.tls, TreeProgress(run_key))["rounds"]
                except NodeError:
                    rounds = []
                for figures in rounds[len(delivered) :]:
                    delivered.append(figures)
                    on_round(figures)
                if finished:
                    return

        follower = threading.Thread(target=follow, daemon=True) if on_round is not None else None
        if follower is not None:
            follower.start()
        try:
            answers = _in_parallel(list(range(len(self.nodes))), train)
        finally:
            done.set()
            if follower is not None:
                follower.join(timeout=60)
        if on_round is not None:  # what the follower did not see (rank 0's answer is the record)
            for figures in answers[0]["rounds"][len(delivered) :]:
                on_round(figures)
        return {
            "answer": answers[0],
            "rows": {n.institution: answers[rank]["rows"] for rank, n in enumerate(self.nodes)},
        }

    def monitor(self, institution, schema, model: Path, period: str, thresholds) -> MonitoredExtract:
        """The institution's node counts its extract of this period with `model` (in the clear)."""
        from institution.monitoring import MonitoredExtract, MonitoringCounts

        request = Monitor(SchemaRef.of(schema), period, _zip_model(model), thresholds.model_dump())
        answer = call(self.node(institution), self.tls, request)
        return MonitoredExtract(MonitoringCounts(**answer["counts"]), int(answer["rows"]), int(answer["not_counted"]))

    def secure_monitor(self, schema, model: Path, period: str, thresholds) -> SecureMonitoring:
        """This period's monitoring counts of every node as one secure sum: the consortium's counts, and from each
        institution only its row counts and its own report's status and findings by name (its figures stay at its
        node). A node that cannot count (no extract, a refused model) is named with its reason; the others are
        summed if enough of them remain."""
        from institution.monitoring import counts_from_vector
        from riskmodel.model import load_manifest_bins

        request = Monitor(SchemaRef.of(schema), period, _zip_model(model), thresholds.model_dump())
        result, failed = self._secure_sum_of("monitor", lambda i: request, f"monitoring of {period}")
        if result is None:
            return SecureMonitoring(None, {}, failed, "")
        counts = counts_from_vector(result.sums["sums"], load_manifest_bins(model), len(result.sent))
        unmonitored = {name: failed.get(name, "its counts were not in the secure sum") for name in self.names}
        for name in result.sent:
            unmonitored.pop(name)
        completed = result.describe(len(self.names), self.secure_threshold)
        return SecureMonitoring(counts, {name: result.meta[name] for name in result.sent}, unmonitored, completed)

    def secure_development(self, model: Path) -> tuple[MonitoringCounts, list[str], str]:
        """The development reference of the challenger `model` this run evaluated, as one secure sum of each node's
        counts of its development rows (kept back from its Evaluate answer): the sum, whose it is, what completed.
        NodeError when the sum cannot complete."""
        from institution.monitoring import counts_from_vector
        from riskmodel.model import files_digest, load_manifest_bins

        request = DevelopmentCounts(self.run_key, files_digest(model))
        result, failed = self._secure_sum_of("development_counts", lambda i: request, "development reference")
        if result is None:
            raise NodeError("development reference: " + "; ".join(f"{n}: {why}" for n, why in failed.items()))
        counts = counts_from_vector(result.sums["sums"], load_manifest_bins(model), len(result.sent))
        return counts, list(result.sent), result.describe(len(self.names), self.secure_threshold)

    def secure_fairness(self, schema, model: Path) -> tuple[dict, str]:
        """The run's counts by protected group (the challenger `model`, with its proxies, and the champion) as one
        secure sum of each node's, which secure aggregation kept out of Evaluate: role -> the consortium's
        institution.fairness.FairnessCounts (a role only when every node had it), and what completed."""
        from institution.fairness import fairness_from_vector, fairness_vector
        from riskmodel.model import files_digest, load_manifest_bins

        request = GroupCountsSum(self.run_key, files_digest(model))
        result, failed = self._secure_sum_of("fairness_counts", lambda i: request, "fair-lending counts")
        if result is None:
            raise NodeError("fair-lending counts: " + "; ".join(f"{n}: {why}" for n, why in failed.items()))
        bins = load_manifest_bins(model)
        size = len(fairness_vector(None, schema, bins))
        summed, everyone = {}, len(result.sent)
        for role, part, with_bins in (
            ("challenger", result.sums["sums"][:size], bins),
            ("champion", result.sums["sums"][size:], None),
        ):
            counts, having = fairness_from_vector(part, schema, with_bins)
            if having == everyone and len(result.sent) == len(self.names):
                summed[role] = counts
        return summed, result.describe(len(self.names), self.secure_threshold)

    def _secure_sum_of(self, added: str, request, when: str):
        """A secure sum over every node of what `request(i)` computes, those failing a phase left out: the result
        (None when too few completed) and each left-out institution's reason."""
        from node import secure
        from secagg.protocol import SecureAggregationError

        names, failed = self.names, {}

        def each(indices, phase, operation):
            results = _in_parallel(indices, lambda i: _attempt(lambda: operation(i)))
            for i, result in results.items():
                if isinstance(result, NodeError):
                    failed[names[i]] = str(result)
            return {i: r for i, r in results.items() if not isinstance(r, NodeError)}

        try:
            result = secure.run_session(
                names,
                list(range(len(names))),
                secure.new_session(added),
                {"sums": secure.SUMS},
                lambda i: (added, request(i)),
                each,
                lambda i, body: call(self.node(names[i]), self.tls, body),
                self.secure_threshold,
                when,
            )
        except SecureAggregationError as error:
            failed["(secure sum)"] = str(error)
            return None, failed
        return result, failed

    def evaluate(self, institution, schema, split, models, evaluation) -> InstitutionEvaluation:
        result = call(
            self.node(institution),
            self.tls,
            Evaluate(
                schema=SchemaRef.of(schema),
                digest=self.digest(institution),
                split=SplitRef.of(split),
                run_key=self.run_key,
                evaluation=evaluation.model_dump(),
                models={role: _zip_model(path) for role, path in models.items()},
            ),
        )
        return InstitutionEvaluation.from_wire(result)


class _Work:
    """One piece of client work in flight at a node: the round it is logged under there, the model version it
    trains from, and its answer once back (a NodeError when it failed twice or was refused)."""

    def __init__(self, index: int, task: int, started_from: int):
        self.index, self.task, self.started_from = index, task, started_from
        self.answer: object = None
        self.weights = ""  # the digest of the weights it trains from (node.runs.round_weights_digest)


@dataclass(frozen=True)
class SecureMonitoring:
    """A period's monitoring as one secure sum: the consortium's counts (None when too few nodes completed it),
    each summed institution's public part (rows, not_counted, status, findings), each other's reason, and what
    completed."""

    counts: MonitoringCounts | None
    institutions: dict[str, dict]
    unmonitored: dict[str, str]
    completed: str


@dataclass
class NodeInstitutions:
    """The training runner across silos: each round's client work and validation at the institutions' nodes,
    in parallel; the coordinator aggregates (fed_models.training.train)."""

    consortium: NodeConsortium
    space: FeatureSpace
    run_key: str
    deltas: dict[str, float] = field(default_factory=dict)  # each institution's DP delta (the privacy plan's)
    names: list[str] = field(init=False)
    fit_rows: list[int] = field(init=False)
    lost: dict[str, str] = field(default_factory=dict)
    reported: dict[str, int] = field(default_factory=dict)
    charged: dict[str, tuple[float, float]] = field(default_factory=dict)  # each node's own (epsilon, delta) of the run
    log: object = None  # a callable taking a line (the run's logger), for what each secure sum completed
    warn: object = None  # a callable taking a line (the run's logger's warning): an institution left out, at once

    def __post_init__(self):
        self.names = self.consortium.names
        self.fit_rows = [0] * len(self.names)
        self._prepare_request = None
        self.round = 0
        self.encoding = None  # node.secure.Encoding of this run, under secure aggregation
        self.missed: list[str] = []  # asked in the last round, its update not in when the round closed
        self.dropped: list[str] = []  # late updates of the last round the runner itself dropped (secure sums)
        self.working: dict[int, _Work] = {}  # under a deadline or a buffer: each node's client work in flight
        self.arrivals: queue.Queue[_Work] = queue.Queue()  # work whose answer (or failure) came back
        self.schedule = None  # fed_models.training.Schedule of the run
        self._validating = None  # (round, thread, result box) of the validation running in the background

    def _prepare(self, index: int) -> None:
        name = self.names[index]
        request = replace(self._prepare_request, digest=self.consortium.digest(name), delta=self.deltas.get(name))
        answer = call(self.consortium.node(name), self.consortium.tls, request)
        self.fit_rows[index] = answer["fit_rows"]
        self.reported[name] = answer["rounds_trained"]

    def _prepare_or_refusal(self, index: int) -> NodeError | None:
        """Prepare at one node; its refusal (the training is outside its policy) returned, not raised, so that the
        institution is left out like a lost one and the quorum decides."""
        try:
            self._prepare(index)
        except NodeError as error:
            if not error.refusal:
                raise
            return error
        return None

    def prepare(self, stages) -> None:
        """Every node checks the training against its policy, encodes its rows with the layout, builds its stages;
        one that refuses is left out while the quorum holds."""
        from fed_models.training import spec_as_dict

        if self.consortium.secure:
            self.encoding = self.consortium.encoding(stages.spec)
        self._prepare_request = Prepare(
            schema=SchemaRef.of(self.space.schema),
            digest="",  # each node's own, and its delta, at _prepare
            run_key=self.run_key,
            spec=spec_as_dict(stages.spec),
            mean=stages.mean,
            std=stages.std,
            layout=self.space.layout.to_json(),
            split=SplitRef.of(self.space.split),
            secure_aggregation=self.consortium.secure,
            champion=self.consortium.champion,
            secure_encoding=self.encoding.as_dict() if self.encoding is not None else None,
        )
        self.schedule = stages.spec.schedule
        self._each(list(range(len(self.names))), START, self._prepare_or_refusal)

    def _with_retry(self, index: int, operation):
        """`operation()` at one node, asked once more after a failure (re-prepared if it restarted)."""
        try:
            return operation()
        except NodeError as first:
            if first.code == grpc.StatusCode.FAILED_PRECONDITION:
                raise  # a refusal is an answer, not a fault
            try:
                if first.code == grpc.StatusCode.NOT_FOUND or first.code == grpc.StatusCode.UNAVAILABLE:
                    self._prepare(index)
                return operation()
            except NodeError as second:
                return second

    def _drop(self, failures: dict[str, NodeError], when: str) -> None:
        active = [n for n in self.names if n not in self.lost and n not in failures]
        reasons = "; ".join(
            f"{error} ({'refused' if error.refusal else 'failed twice'})" for error in failures.values()
        )
        if len(active) < self.consortium.quorum:
            raise TrainingStopped(
                f"{when}: {reasons}; {len(active)} institution(s) left, quorum is "
                f"{self.consortium.quorum}: the run stops, nothing is registered, and the next run resumes from "
                f"the last round's checkpoint"
            )
        for name, error in failures.items():
            start = error.refusal and when == START
            self.lost[name] = f"{REFUSED_AT_START}: {error}" if start else f"{LEFT_OUT} {when}: {error}"
            if self.warn is not None:
                self.warn(
                    f"institution '{name}' {self.lost[name]}; the run goes on with {len(active)} institution(s) "
                    f"(quorum {self.consortium.quorum})"
                )

    def _each(self, indices: list[int], when: str, operation) -> dict[int, object]:
        """`operation(i)` at each node in parallel; a node failing twice is dropped (see `_drop`)."""
        results = _in_parallel(indices, lambda i: self._with_retry(i, lambda: operation(i)))
        failures = {self.names[i]: r for i, r in results.items() if isinstance(r, NodeError)}
        if failures:
            self._drop(failures, when)
        return {i: r for i, r in results.items() if not isinstance(r, NodeError)}

    def _secure_sum(self, indices: list[int], added: str, request, vectors: dict, when: str):
        """A secure sum over the nodes `indices` (those failing a phase are left out, as in a plain round);
        TrainingStopped when fewer than the threshold complete it."""
        from node import secure
        from secagg.protocol import SecureAggregationError

        consortium = self.consortium
        try:
            result = secure.run_session(
                self.names,
                indices,
                secure.new_session(f"{self.run_key}/{when}"),
                vectors,
                lambda i: (added, request(i)),
                self._each,
                lambda i, body: call(consortium.node(self.names[i]), consortium.tls, body),
                consortium.secure_threshold,
                when,
            )
        except SecureAggregationError as error:
            raise TrainingStopped(
                f"{when}: {error}; the run stops, nothing is registered, and the next run resumes "
                f"from the last round's checkpoint"
            ) from None
        if self.log is not None:
            self.log(f"{when}: {result.describe(len(indices), consortium.secure_threshold)}")
        return result

    def train_round(self, stages, round_num, weights, chosen):
        from fed_models.training import ClientUpdate, client_seed, weights_as_lists

        plain = weights_as_lists(weights)
        indices = [i for i in chosen if self.names[i] not in self.lost]
        self.dropped = []
        if self.schedule.mode != "synchronous":
            return self._scheduled_round(stages, round_num, plain, indices)
        if self.consortium.secure:
            return self._secure_round(stages, round_num, plain, indices)

        def train(i: int):
            request = TrainRound(self.run_key, round_num, plain, client_seed(stages.spec.seed, round_num, i))
            return call(self.consortium.node(self.names[i]), self.consortium.tls, request)

        self.round = round_num
        answers = self._each(indices, f"round {round_num}", train)
        updates = []
        for i, answer in sorted(answers.items()):
            self._reported(self.names[i], answer)
            updates.append(
                ClientUpdate(self.names[i], list(answer["update"]), float(answer["weight"]), answer["metrics"])
            )
        return updates

    # --- a deadline or a buffer: client work runs on while rounds close --------------------------------------------
    def _start(self, index: int, stages, version: int, plain: dict) -> None:
        """Client work at node `index` from model `version` (rounds applied), in a thread of its own; its answer
        (or failure) lands in `arrivals`. Under a deadline the work is logged at the node as this round; under a
        buffer as the node's next round of the run (a node trains at most the rounds it was declared)."""
        from fed_models.training import client_seed

        if index in self.working or self.names[index] in self.lost:
            return
        task = version + 1 if self.schedule.mode == "deadline" else self.reported.get(self.names[index], 0) + 1
        if task > stages.spec.rounds:
            return
        request = TrainRound(
            self.run_key, task, plain, client_seed(stages.spec.seed, task, index), hold=self.consortium.secure
        )
        work = _Work(index, task, version)
        work.weights = round_weights_digest(plain)
        self.working[index] = work

        def run() -> None:
            try:
                work.answer = self._with_retry(
                    index, lambda: call(self.consortium.node(self.names[index]), self.consortium.tls, request)
                )
            except NodeError as error:  # a refusal
                work.answer = error
            self.arrivals.put(work)

        threading.Thread(target=run, name=f"round-{task}-{self.names[index]}", daemon=True).start()

    def _scheduled_round(self, stages, round_num: int, plain: dict, asked: list[int]):
        """The updates for server step `round_num` under a deadline (the round closes when every asked
        institution's update from this round's model is in, or at the deadline once `min_share` of the fit rows
        reported; an institution whose late update arrives meanwhile starts again from this round's model) or a
        buffer (the step is made when `buffer_size` updates have arrived; every institution starts again from the
        latest model as soon as it reports)."""
        from fed_models.training import ClientUpdate

        schedule, version = self.schedule, round_num - 1
        self.round, when = round_num, f"round {round_num}"
        buffered = schedule.mode == "buffered"
        for i in asked:
            self._start(i, stages, version, plain)
        closes = None if buffered else time.monotonic() + schedule.deadline_seconds
        # Under secure aggregation a round is one sum, of at least the threshold and never fewer than three.
        needed = max(self.consortium.secure_threshold, MIN_SUMMED) if self.consortium.secure else 0
        active = [i for i, name in enumerate(self.names) if name not in self.lost]
        total = sum(self.fit_rows[i] for i in active) or 1
        arrived: list[_Work] = []
        fresh: set[int] = set()
        failures: dict[str, NodeError] = {}
        while True:
            if buffered:
                if len([w for w in arrived if schedule.applies(version - w.started_from)]) >= schedule.buffer_size:
                    break
                if not self.working:
                    break
                timeout = None
            else:
                # Every asked institution is waited for until the deadline (one still busy with an earlier
                # round's work too: its late update may come, and its fresh one after it).
                waiting = [i for i in asked if i not in fresh and self.names[i] not in failures]
                now = time.monotonic()
                reported = sum(self.fit_rows[i] for i in fresh) / total
                enough = reported >= schedule.min_share and len(fresh) >= needed
                if not waiting or (now >= closes and enough):
                    break
                timeout = closes - now if now < closes else None
            try:
                work = self.arrivals.get(timeout=timeout)
            except queue.Empty:
                continue
            self.working.pop(work.index, None)
            name = self.names[work.index]
            if isinstance(work.answer, NodeError):
                failures[name] = work.answer
                continue
            self._reported(name, work.answer)
            arrived.append(work)
            if work.started_from == version:
                fresh.add(work.index)
            full = buffered and (
                len([w for w in arrived if schedule.applies(version - w.started_from)]) >= schedule.buffer_size
            )
            # Free again: it starts from the latest model. The update that fills the buffer starts again after the
            # step, from the model the step makes; under secure aggregation every node holding an update does (a
            # sum has each node once).
            restart = not self.consortium.secure and not full if buffered else work.started_from < version
            if restart and work.index in asked:
                self._start(work.index, stages, version, plain)
        if failures:
            self._drop(failures, when)
        self.missed = (
            [] if buffered else [self.names[i] for i in asked if i not in fresh and self.names[i] not in self.lost]
        )
        arrived.sort(key=lambda w: (w.started_from, w.index, w.task))
        self._log_participation(round_num, arrived, asked)
        if self.consortium.secure:
            if buffered:
                return self._buffer_sum(round_num, arrived)
            return self._deadline_sum(stages, round_num, plain, arrived)
        return [
            ClientUpdate(
                self.names[w.index],
                list(w.answer["update"]),
                float(w.answer["weight"]),
                w.answer["metrics"],
                started_from=w.started_from,
            )
            for w in arrived
        ]

    def _buffer_sum(self, step: int, arrived: list[_Work]):
        """One server step of a buffered run under secure aggregation: the held updates of the buffer as one
        secure sum, each weighted at its node by its staleness discount; an update too old is never summed."""
        version, when = step - 1, f"round {step}"
        applied = [w for w in arrived if self.schedule.applies(version - w.started_from)]
        self.dropped = [self.names[w.index] for w in arrived if w not in applied]
        if not applied:
            return []
        buffer = {
            self.names[w.index]: [w.task, w.weights, self.schedule.discount(version - w.started_from)] for w in applied
        }
        ages = {self.names[w.index]: version - w.started_from for w in applied}
        result = self._secure_sum(
            [w.index for w in applied],
            "buffered_round",
            lambda i: BufferedRound(self.run_key, step, buffer),
            self.encoding.specs(),
            when,
        )
        return self._round_sum(result, when, ages)

    def _deadline_sum(self, stages, round_num: int, plain: dict, arrived: list[_Work]):
        """A round under a deadline and secure aggregation: one secure sum of the updates the nodes trained from this
        round's model and hold; a late update (from an earlier round's model) is dropped, never summed: alone in a
        later sum it would be read."""
        version = round_num - 1
        self.dropped = [self.names[w.index] for w in arrived if w.started_from < version]
        return self._secure_round(stages, round_num, plain, [w.index for w in arrived if w.started_from == version])

    def _log_participation(self, round_num: int, arrived: list[_Work], asked: list[int]) -> None:
        """The round in one line of the run's log: who was on time, whose late update was applied or dropped,
        who missed the deadline and is still training."""
        if self.log is None:
            return
        version = round_num - 1
        parts = []
        on_time = [self.names[w.index] for w in arrived if w.started_from == version]
        if on_time:
            parts.append("on time: " + ", ".join(on_time))
        for w in arrived:
            age = version - w.started_from
            if age > 0:
                fate = (
                    f"applied at {self.schedule.discount(age):.2f} of its weight"
                    if self.schedule.applies(age)
                    else "dropped"
                )
                parts.append(f"{self.names[w.index]}'s update from round {w.started_from + 1} late by {age}: {fate}")
        for name in self.missed:
            busy = self.working.get(self.names.index(name))
            parts.append(
                f"{name} missed the deadline"
                + (f" (still training from round {busy.started_from + 1})" if busy is not None else "")
            )
        self.log(f"round {round_num}: " + "; ".join(parts or ["no update arrived"]))

    def _secure_round(self, stages, round_num: int, plain: dict, indices: list[int]):
        """The round's client work at each node, added up by a secure sum: one consortium update (the weighted mean
        of the clipped updates), never one institution's."""
        from fed_models.training import client_seed

        self.round = round_num
        when = f"round {round_num}"
        result = self._secure_sum(
            indices,
            "train_round",
            lambda i: TrainRound(self.run_key, round_num, plain, client_seed(stages.spec.seed, round_num, i)),
            self.encoding.specs(),
            when,
        )
        return self._round_sum(result, when, {})

    def _round_sum(self, result, when: str, ages: dict[str, int]) -> list:
        """The one consortium update a secure sum of round updates makes (each member's staleness in `ages`, none:
        this round's), with each node's account of its rounds and privacy; refused when out of range."""
        from fed_models.training import ClientUpdate
        from node import secure
        from secagg.protocol import SecureAggregationError

        for name, meta in result.meta.items():
            self._reported(name, meta)
        try:
            summed = secure.decode_round(result.sums, result.meta[result.sent[0]], len(result.sent), self.encoding)
        except SecureAggregationError as error:
            raise TrainingStopped(f"{when}: {error}; nothing is registered") from None
        return [
            ClientUpdate(
                "consortium (secure sum)",
                summed.update,
                summed.weight,
                summed.metrics,
                institutions=summed.institutions,
                non_finite=summed.non_finite,
                members=tuple((name, ages.get(name, 0)) for name in result.sent),
            )
        ]

    def validate(self, stages, round_num: int, weights) -> list[tuple[int, list[dict] | None]]:
        """Synchronous: this round's validation at every node, at once. Under a deadline or a buffer validation
        runs in the background, a round at a time, so a slow node never holds a round back: the round before's
        result if it is in, and this round's validation started; a round asked while one is out is not validated
        (it is not compared)."""
        from fed_models.training import weights_as_lists

        plain = weights_as_lists(weights)
        if self.schedule.mode == "synchronous":
            return [(round_num, self._validate_now(round_num, plain))]
        done: list[tuple[int, list[dict] | None]] = []
        if self._validating is not None:
            if self._validating[1].is_alive():
                return [(round_num, None)]
            done.append(self._validation_result())
        box: dict = {}

        def run() -> None:
            try:
                box["result"] = self._validate_now(round_num, plain)
            except Exception as error:  # a run that stops (too few left) stops where it is read
                box["error"] = error

        thread = threading.Thread(target=run, name=f"validation-{round_num}", daemon=True)
        self._validating = (round_num, thread, box)
        thread.start()
        return done

    def _validation_result(self) -> tuple[int, list[dict] | None]:
        round_num, thread, box = self._validating
        thread.join()
        self._validating = None
        if "error" in box:
            raise box["error"]
        if self.log is not None and self.schedule.mode != "synchronous":
            self.log(f"validation of round {round_num}: every institution's is in")
        return round_num, box["result"]

    def last_validations(self) -> list[tuple[int, list[dict] | None]]:
        return [self._validation_result()] if self._validating is not None else []

    def _validate_now(self, round_num: int, plain: dict) -> list[dict]:
        """Every remaining node's validation sums of `plain` weights (one secure sum under secure aggregation)."""
        indices = [i for i, name in enumerate(self.names) if name not in self.lost]
        when = f"validation of round {round_num}"
        if self.consortium.secure:
            from node import secure

            result = self._secure_sum(
                indices,
                "validate_round",
                lambda i: ValidateRound(self.run_key, plain),
                {"sums": secure.SUMS},
                when,
            )
            return [secure.unflatten(result.sums["sums"], result.meta[result.sent[0]]["metrics"])]
        answers = self._each(
            indices,
            when,
            lambda i: call(
                self.consortium.node(self.names[i]), self.consortium.tls, ValidateRound(self.run_key, plain)
            ),
        )
        return [answers[i]["metrics"] for i in sorted(answers)]

    def finish(self) -> None:
        """Work still in flight is not waited for (its node has logged and charged it; its update is unused)."""
        self.working.clear()

    def _reported(self, name: str, answer: dict) -> None:
        """A node's account of the run after a round: the rounds it trained, and the epsilon its own ledger charged
        at its own delta (what the coordinator records: the institution's accounting is the one that counts)."""
        self.reported[name] = answer["rounds_trained"]
        if answer.get("epsilon") is not None and answer.get("delta") is not None:
            self.charged[name] = (float(answer["epsilon"]), float(answer["delta"]))

    def trained_rounds(self, rounds_run: int) -> dict[str, int]:
        """What each node reports it trained in this run (what its privacy is charged for)."""
        return {name: self.reported.get(name, 0) for name in self.names}
