"""What a node does: fedrisk's fixed per-institution operations on its own extract, nothing else.

Each operation is the function the pipeline runs in simulation (consortium.local.LocalConsortium, the
fed_models client work), called here with the request's plain values; no code or computation sent by
the coordinator is ever run. The node enforces what its institution agreed to (schema, rounds, model
kinds, privacy and its budget), trains each round of a run once (a repeated round id gets the same
answer; the same round id with other weights is refused), and keeps its round log and privacy ledger
on its own disk, so a restart loses nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from consortium.local import LocalConsortium
from contract.data import Extract, Split
from errors import FedriskError
from institution.statistics import FeatureSpace
from institution.validation import EXPECTATIONS_DIR
from node import wire
from node.config import NodeConfig
from node.inputs import SecureInputs
from node.reference import Reference
from node.runs import RunRecords, weights_digest
from riskmodel.model import ENGINE_FILES, MANIFEST
from runconfig import EvaluationConfig

MODEL_FILES = (MANIFEST, *ENGINE_FILES)


class NodeRefusal(FedriskError, ValueError):
    """A request the node will not serve: outside its institution's policy, or not what its data is."""


class UnknownRun(FedriskError, LookupError):
    """A round of a training this node was not prepared for (it restarted): prepare it again."""


@dataclass
class _Run:
    """A training prepared at this node: its stages and this institution's encoded rows."""

    stages: object
    fit: object
    validation: object
    delta: float
    secure: bool = False  # trained under secure aggregation: no plain update or metric leaves for this run
    encoding: object = None  # node.secure.Encoding: how this run's updates enter secure sums (fixed at Prepare)


@dataclass
class _Session:
    """One secure sum this node takes part in: its side of the protocol and each phase's answer (a phase asked
    again gets the same answer)."""

    participant: object
    answers: dict
    begun: tuple  # (operation, participants, threshold): a retry must ask the same
    digest: str  # node.secure.input_digest of this node's input
    description: str  # the input, in words


MAX_SESSIONS = 64


def _weights_digest(weights: dict) -> str:
    return weights_digest([*weights["trainable"], *weights["non_trainable"]])


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class NodeService:
    def __init__(self, config: NodeConfig, expectations_dir: Path = EXPECTATIONS_DIR, isolation=None):
        self.config, self.schema = config, config.schema()
        self.name = config.institution
        self.extract = Extract(self.name, config.extract.path, dict(config.extract.columns))
        self.expectations_dir = Path(expectations_dir)
        self.isolation = isolation
        self.runs: dict[str, _Run] = {}
        self.sessions: OrderedDict[str, _Session] = OrderedDict()  # secure sums in progress (the latest few)
        self.lock = threading.Lock()  # TFF's execution context is process-wide: one computation at a time
        self.rounds_dir = config.work_dir / "rounds"
        self.ledger_file = config.work_dir / "ledger.json"
        self.rounds_dir.mkdir(parents=True, exist_ok=True)
        self.secure_inputs = SecureInputs(config.work_dir / "secure_inputs.jsonl")
        self.secure_rules = config.secure_rules()
        self.run_records = RunRecords(config.work_dir / "runs")
        self.reference = Reference(config.work_dir / "reference.json")

    @contextmanager
    def _computing(self):
        """One TFF computation at a time, with TFF's context installed in this (gRPC worker) thread."""
        from fed_models import runtime

        with self.lock:
            runtime.ensure_context(self.isolation)
            yield

    # --- checks ---------------------------------------------------------------------------------------
    def _check_schema(self, request: dict) -> None:
        asked = request.get("schema") or {}
        if (asked.get("name"), str(asked.get("version"))) != (self.schema.name, str(self.schema.version)):
            raise NodeRefusal(
                f"institution '{self.name}': its extract follows schema {self.schema.name} version "
                f"{self.schema.version}; the coordinator asked for {asked.get('name')} version "
                f"{asked.get('version')}"
            )

    def _admitted(self, request: dict) -> LocalConsortium:
        """This institution's extract pinned to the digest the coordinator admitted (checked on every read)."""
        return LocalConsortium((self.extract.validated(request["digest"]),))

    def _space(self, request: dict) -> FeatureSpace:
        """The run's feature space as the coordinator sent it (layout, split; mean and std for a network)."""
        from riskmodel.layout import Layout

        return FeatureSpace(
            self.schema,
            Layout.from_json(request["layout"]),
            Split(**request["split"]),
            tuple(request.get("mean", ())),
            tuple(request.get("std", ())),
        )

    def _check_policy(self, spec, rounds: int) -> None:
        policy = self.config.policy
        if rounds > policy.max_rounds:
            raise NodeRefusal(
                f"institution '{self.name}' agreed to at most {policy.max_rounds} rounds, the run "
                f"plans {rounds} (policy.max_rounds)"
            )
        if spec.model.kind not in policy.model_kinds:
            raise NodeRefusal(
                f"institution '{self.name}' trains only {policy.model_kinds}, not {spec.model.kind} "
                f"(policy.model_kinds)"
            )
        from fed_models.training import RecordLevelPrivacy

        if policy.require_privacy == "record_level" and not isinstance(spec.privacy, RecordLevelPrivacy):
            raise NodeRefusal(
                f"institution '{self.name}' trains only with record-level differential privacy "
                f"(DP-SGD); the run asks for {type(spec.privacy).__name__ if spec.privacy else 'none'} "
                f"(policy.require_privacy)"
            )
        if policy.min_noise_multiplier is not None and isinstance(spec.privacy, RecordLevelPrivacy):
            noise = spec.privacy.noise_multipliers.get(self.name)
            if noise is None or noise < policy.min_noise_multiplier:
                raise NodeRefusal(
                    f"institution '{self.name}' trains with DP-SGD only at a noise multiplier of at "
                    f"least {policy.min_noise_multiplier:g}; the run asks for {noise} "
                    f"(policy.min_noise_multiplier)"
                )

    # --- privacy ledger -------------------------------------------------------------------------------
    def _ledger(self) -> dict:
        return json.loads(self.ledger_file.read_text()) if self.ledger_file.exists() else {}

    def _charge(self, run_key: str, run: _Run, rounds: int) -> float:
        """Epsilon of `rounds` rounds of this run at this node; refused past the institution's budget."""
        from fed_models.accounting import record_level_epsilon, steps_per_round
        from fed_models.training import RecordLevelPrivacy

        spec = run.stages.spec
        if not isinstance(spec.privacy, RecordLevelPrivacy):
            return 0.0
        rows = len(run.fit.y)
        steps = steps_per_round(rows, spec.batch_size, spec.local_epochs) * rounds
        epsilon = record_level_epsilon(
            rows=rows,
            batch_size=spec.batch_size,
            steps=steps,
            noise_multiplier=spec.privacy.noise_multipliers[self.name],
            delta=run.delta,
        )
        ledger = self._ledger()
        earlier = sum(entry["epsilon"] for key, entry in ledger.items() if key != run_key)
        budget = self.config.policy.privacy_budget
        if budget is not None and earlier + epsilon > budget + 1e-9:
            raise NodeRefusal(
                f"institution '{self.name}': privacy budget exceeded: round {rounds} of this run would "
                f"bring its epsilon to {epsilon:.4f} on top of {earlier:.4f} spent before, over its "
                f"budget of {budget:g} (policy.privacy_budget)"
            )
        per_run = self.config.policy.max_epsilon_per_run
        if per_run is not None and epsilon > per_run + 1e-9:
            raise NodeRefusal(
                f"institution '{self.name}': round {rounds} of this run would bring its epsilon to "
                f"{epsilon:.4f}, over the {per_run:g} one training may spend "
                f"(policy.max_epsilon_per_run)"
            )
        ledger[run_key] = {"epsilon": epsilon, "delta": run.delta, "rounds": rounds}
        _write_atomically(self.ledger_file, json.dumps(ledger, indent=1).encode())
        return epsilon

    # --- operations -----------------------------------------------------------------------------------
    def describe(self, request: dict) -> dict:
        return {
            "institution": self.name,
            "schema": {"name": self.schema.name, "version": self.schema.version},
            "policy": self.config.policy.model_dump(),
        }

    def validate(self, request: dict) -> dict:
        """The validation report and its page as they may be shared (counts, check and declared names), for the
        coordinator's run; example values, undeclared columns and the institution's own page stay in this node's
        log. A node that requires secure aggregation sends no profile and checks drift against its own reference."""
        from contract.data import InstitutionDataError, read_bytes
        from institution.validation import validate_extract

        self._check_schema(request)
        private = self.config.policy.require_secure_aggregation
        reference = request.get("reference")
        if private:
            try:
                reference = self.reference.for_extract(read_bytes(self.name, self.extract.path)[1])
            except InstitutionDataError:
                reference = None  # unreadable: the validation says so
        report = validate_extract(
            self.extract, self.schema, reference, self.expectations_dir, private_reference=private
        )
        if private and report.passed and report.profile is not None:
            self.reference.accepted(report.digest, report.profile)
        page = Path(report.data_docs).read_text() if report.data_docs else None
        return {"report": asdict(report.shared(profile=not private)), "data_docs_html": page}

    def _refuse_plain(self, what: str, run: _Run | None = None) -> None:
        if self.config.policy.require_secure_aggregation:
            raise NodeRefusal(
                f"institution '{self.name}' sends its {what} only through secure aggregation "
                f"(policy.require_secure_aggregation)"
            )
        if run is not None and run.secure:
            raise NodeRefusal(
                f"institution '{self.name}' sends its {what} only through secure aggregation (the run "
                f"was prepared for it)"
            )

    def statistics(self, request: dict) -> dict:
        self._check_schema(request)
        self._refuse_plain("statistics")
        return self._statistics(request)

    def _statistics(self, request: dict) -> dict:
        split = Split(**request["split"])
        return asdict(self._admitted(request).statistics(self.name, self.schema, request["features"], split))

    def prepare(self, request: dict) -> dict:
        """Get ready for a training: check it against the policy, encode this institution's rows with the
        run's layout, build the TFF stages. Returns how many rows it trains on."""
        from fed_models.accounting import default_delta
        from fed_models.training import build_stages, spec_from_dict

        self._check_schema(request)
        spec = spec_from_dict(request["spec"])
        self._check_policy(spec, spec.rounds)
        space = self._space(request)
        runner = self._admitted(request).training(space, request["run_key"])
        [fit], [validation] = runner.clients, runner.validation
        with self._computing():
            stages = build_stages(spec, np.asarray(space.mean), np.asarray(space.std), n_clients=1)
        # Privacy is accounted at the node's own delta: the coordinator may ask for a smaller one, never a larger.
        own = self.config.policy.max_delta or default_delta(len(fit.y))
        delta = min(float(request["delta"]), own) if request.get("delta") else own
        secure = bool(request.get("secure_aggregation"))
        encoding = None
        if secure:
            encoding = self._encoding(request.get("secure_encoding"))
        else:
            self._refuse_plain("model updates")
        self.runs[request["run_key"]] = _Run(stages, fit, validation, delta, secure, encoding)
        self.run_records.begin(request["run_key"], request["layout"], request.get("champion"))
        return {
            "fit_rows": int(len(fit.y)),
            "rounds_trained": len(self._logged_rounds(request["run_key"])),
            "delta": delta,
        }

    def _encoding(self, plain: dict | None):
        """The run's secure encoding, sent once at Prepare (the same to every node, bound into its signed keys)."""
        from node.secure import Encoding
        from secagg.protocol import RULE_ENCODING, SecureAggregationError

        if self.secure_rules is None:
            raise NodeRefusal(
                f"institution '{self.name}' takes part in no secure sum: its config lists no "
                f"consortium members (consortium.members)"
            )
        try:
            if not plain:
                raise SecureAggregationError(
                    "a run under secure aggregation must fix its encoding at Prepare", RULE_ENCODING
                )
            return Encoding.from_dict(plain)
        except SecureAggregationError as error:
            raise NodeRefusal(f"institution '{self.name}': {error}") from None

    def _run(self, run_key: str) -> _Run:
        if run_key not in self.runs:
            raise UnknownRun(f"institution '{self.name}' has no prepared run {run_key} (it restarted?)")
        return self.runs[run_key]

    def _logged_rounds(self, run_key: str) -> list[int]:
        directory = self.rounds_dir / run_key
        return sorted(int(p.stem.split("_")[1]) for p in directory.glob("round_*.json")) if directory.is_dir() else []

    def train_round(self, request: dict) -> bytes:
        """One round of this institution's client work, its update in the clear (no secure aggregation)."""
        self._refuse_plain("model updates", self.runs.get(request["run_key"]))
        return self._train_round(request, secure=False)

    def _train_round(self, request: dict, secure: bool) -> bytes:
        """One round of this institution's client work, once: the same round id again gets the same answer;
        with other weights it is refused (so privacy is charged for exactly what was trained), and a round
        trained for a secure sum is never answered in the clear (not even after a restart)."""
        from fed_models.dp_sgd import secure_rng
        from fed_models.training import client_round, weights_from_lists

        run_key, round_num = request["run_key"], int(request["round"])
        digest = _weights_digest(request["weights"])
        directory = self.rounds_dir / run_key
        record, answer = directory / f"round_{round_num}.json", directory / f"round_{round_num}.msg"
        if record.exists():
            logged = json.loads(record.read_text())
            if logged["weights_sha256"] != digest:
                raise NodeRefusal(
                    f"institution '{self.name}': round {round_num} of run {run_key} was already trained "
                    f"from other global weights; a round is trained once"
                )
            if logged.get("secure") and not secure:
                raise NodeRefusal(f"institution '{self.name}' sends its model updates only through secure aggregation")
            return answer.read_bytes()
        run = self._run(run_key)
        self._check_round(run_key, run, round_num)
        self.run_records.saw_weights(run_key, request["weights"]["trainable"])
        rounds = len(self._logged_rounds(run_key)) + 1
        epsilon = self._charge(run_key, run, rounds)
        with self._computing():
            update = client_round(
                run.stages,
                run.fit,
                weights_from_lists(request["weights"]),
                seed=int(request["client_seed"]),
                rng=secure_rng(),
            )
        message = wire.encode(
            {
                "update": update.update,
                "weight": update.weight,
                "metrics": update.metrics,
                "rounds_trained": rounds,
                "epsilon": epsilon,
                "delta": run.delta,
            }
        )
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(answer, message)
        _write_atomically(record, json.dumps({"weights_sha256": digest, "secure": secure}).encode())
        return message

    def _check_round(self, run_key: str, run: _Run, round_num: int) -> None:
        """Every round against what the run declared at Prepare and the institution's own limit (a coordinator
        that declared few rounds and asks for more is refused at the first one past them)."""
        declared, limit = run.stages.spec.rounds, self.config.policy.max_rounds
        if round_num < 1 or round_num > declared:
            raise NodeRefusal(
                f"institution '{self.name}': run {run_key} declared {declared} rounds at Prepare; round "
                f"{round_num} is not one of them (the declared rounds)"
            )
        if round_num > limit:
            raise NodeRefusal(
                f"institution '{self.name}' agreed to at most {limit} rounds; round {round_num} of run "
                f"{run_key} is past them (policy.max_rounds)"
            )

    def validate_round(self, request: dict) -> dict:
        self._refuse_plain("validation metrics", self._run(request["run_key"]))
        return self._validate_round(request)

    def _validate_round(self, request: dict) -> dict:
        from fed_models.training import validation_metrics, weights_from_lists

        run = self._run(request["run_key"])
        self.run_records.saw_weights(request["run_key"], request["weights"]["trainable"])
        with self._computing():
            return {"metrics": validation_metrics(run.stages, run.validation, weights_from_lists(request["weights"]))}

    # --- secure aggregation ---------------------------------------------------------------------------
    def secure_begin(self, request: dict) -> dict:
        """Compute this institution's input to a secure sum (a round's update and metrics, a validation's metric
        sums, or its statistics), keep it here, and return fresh public keys signed with its TLS key together with
        the digest of the session's parameters. Refused outside its consortium's rules, for an input it already
        added to another sum, or for a run's round encoded other than the run fixed at Prepare."""
        from institution.statistics import LocalStatistics, statistics_vector
        from node import secure
        from secagg import ring
        from secagg.protocol import RULE_ENCODING, RULE_ONE_SUM, Participant, SecureAggregationError, context_digest
        from secagg.ring import VectorSpec

        session = request["session"]
        participants, threshold = tuple(sorted(request["participants"])), int(request["threshold"])
        operation, inner = request["operation"], request["request"]
        if session in self.sessions:
            known = self.sessions[session]
            if known.begun != (operation, participants, threshold):
                raise NodeRefusal(
                    f"institution '{self.name}': secure sum {session} began with other participants, "
                    f"threshold or operation; a retry continues the same session (rule: {RULE_ONE_SUM})"
                )
            return known.answers["begin"]
        if self.secure_rules is None:
            raise NodeRefusal(
                f"institution '{self.name}' takes part in no secure sum: its config lists no "
                f"consortium members (consortium.members)"
            )
        try:
            self.secure_rules.check_session(self.name, participants, threshold)
        except SecureAggregationError as error:
            raise NodeRefusal(f"institution '{self.name}' refuses secure sum {session}: {error}") from None
        meta: dict = {}
        if operation == "train_round":
            run = self._run(inner["run_key"])
            if not run.secure:
                raise NodeRefusal(
                    f"institution '{self.name}': run {inner['run_key']} was prepared without secure aggregation"
                )
            if len(participants) > run.encoding.institutions:
                raise NodeRefusal(
                    f"institution '{self.name}': {len(participants)} participants, but run "
                    f"{inner['run_key']} encodes sums of at most {run.encoding.institutions} "
                    f"(rule: {RULE_ENCODING})"
                )
            answer = wire.decode(self._train_round(inner, secure=True))
            raw = {
                "update": np.concatenate([np.ravel(u) for u in answer["update"]]),
                "sums": secure.flatten(answer["metrics"])[0],
                "weight": np.asarray([answer["weight"]]),
            }
            try:
                values, meta = secure.round_inputs(answer["update"], answer["weight"], answer["metrics"], run.encoding)
            except SecureAggregationError as error:
                raise NodeRefusal(f"institution '{self.name}': {error}") from None
            meta.update(rounds_trained=answer["rounds_trained"], epsilon=answer["epsilon"], delta=answer["delta"])
            vectors = run.encoding.specs()
            bound = {
                "run_key": inner["run_key"],
                "round": int(inner["round"]),
                "encoding": run.encoding.as_dict(),
                "weights": _weights_digest(inner["weights"]),
            }
            description = f"its update of round {int(inner['round'])} of run {inner['run_key']}"
        elif operation == "validate_round":
            flat, structure = secure.flatten(self._validate_round(inner)["metrics"])
            values, meta, raw = {"sums": flat}, {"metrics": structure}, {"sums": flat}
            vectors = {"sums": secure.SUMS}
            weights = _weights_digest(inner["weights"])
            bound = {"run_key": inner["run_key"], "weights": weights}
            description = f"its validation metrics of run {inner['run_key']} for weights {weights[:12]}"
        elif operation == "statistics":
            self._check_schema(inner)
            statistics = LocalStatistics(**self._statistics(inner))
            values = {"sums": statistics_vector(statistics, self.schema, inner["features"])}
            raw, meta, vectors = values, {"count": statistics.count}, {"sums": secure.SUMS}
            bound = {"schema": inner["schema"], "features": list(inner["features"]), "split": inner["split"]}
            description = f"the statistics of its extract {str(inner['digest'])[:12]}"
        else:
            raise NodeRefusal(f"institution '{self.name}' adds no '{operation}' to a secure sum")
        digest = secure.input_digest(operation, raw)
        self._refuse_second_sum(digest, session)
        specs = {name: VectorSpec(len(v), **vectors[name]) for name, v in values.items()}
        shapes = {name: [spec.size, spec.bits, spec.scale] for name, spec in specs.items()}
        context = context_digest(
            {
                "session": session,
                "operation": operation,
                "participants": list(participants),
                "threshold": threshold,
                **bound,
                "vectors": shapes,
            }
        )
        participant = Participant(
            self._identity,
            session,
            participants,
            threshold,
            self.secure_rules,
            context,
            {name: ring.encode(v, specs[name]) for name, v in values.items()},
            specs,
        )
        answer = {
            "keys": participant.advertise().as_dict(),
            "meta": meta,
            "sizes": {name: spec.size for name, spec in specs.items()},
        }
        self.sessions[session] = _Session(
            participant, {"begin": answer}, (operation, participants, threshold), digest, description
        )
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return answer

    def _refuse_second_sum(self, digest: str, session: str) -> None:
        earlier = self.secure_inputs.earlier(digest, session)
        if earlier is not None:
            raise self._second_sum(earlier)

    def _second_sum(self, earlier) -> NodeRefusal:
        from secagg.protocol import RULE_ONE_SUM

        return NodeRefusal(
            f"institution '{self.name}' already added {earlier.description} to secure sum {earlier.session} "
            f"({earlier.at}, participants {list(earlier.participants)}); a second sum over the same input would let "
            f"the coordinator subtract the sums and read it (rule: {RULE_ONE_SUM})"
        )

    @cached_property
    def _identity(self):
        """This institution's TLS identity, which signs its keys in every secure sum (read once)."""
        from secagg.protocol import Identity

        ca, cert, key = self.config.tls.read()
        return Identity(self.name, cert, key, ca)

    def _session(self, request: dict) -> _Session:
        if request["session"] not in self.sessions:
            raise UnknownRun(f"institution '{self.name}' has no secure sum {request['session']} (it restarted?)")
        return self.sessions[request["session"]]

    def _phase(self, request: dict, phase: str, compute) -> dict:
        from secagg.protocol import SecureAggregationError

        session = self._session(request)
        if phase not in session.answers:
            try:
                session.answers[phase] = compute(session.participant)
            except SecureAggregationError as error:
                raise NodeRefusal(f"institution '{self.name}': {error}") from None
        return session.answers[phase]

    def secure_share(self, request: dict) -> dict:
        """Check every relayed key against the consortium CA, then send encrypted shares of this node's secrets."""
        from secagg.protocol import Advertisement

        roster = {name: Advertisement.from_dict(a) for name, a in request["roster"].items()}
        return self._phase(
            request, "share", lambda p: {"shares": {to: box.hex() for to, box in p.share(roster).items()}}
        )

    def secure_mask(self, request: dict) -> dict:
        """This node's input, masked (the only form in which it leaves), recorded first as added to this sum."""
        from secagg import ring

        inbox = {sender: bytes.fromhex(box) for sender, box in request["inbox"].items()}
        session = self._session(request)

        def mask(p):
            masked = p.masked(inbox)
            earlier = self.secure_inputs.record(
                session.digest, p.session, session.begun[0], session.description, p.participants
            )
            if earlier is not None:  # another session of the same input masked first: this one ends here
                self.sessions.pop(p.session, None)
                raise self._second_sum(earlier)
            return {"masked": {name: ring.to_bytes(value, p.specs[name]) for name, value in masked.items()}}

        return self._phase(request, "mask", mask)

    def secure_consistency(self, request: dict) -> dict:
        """This node's signature on the coordinator's list of senders, if the list agrees with what it saw."""
        sent = sorted(request["sent"])
        return self._phase(request, "consistency " + ",".join(sent), lambda p: {"signature": p.consistency(sent).hex()})

    def secure_unmask(self, request: dict) -> dict:
        """Its shares for the list of senders it signed, once shown the threshold's signatures on that list."""
        sent = sorted(request["sent"])
        signatures = {name: bytes.fromhex(signature) for name, signature in request["signatures"].items()}
        return self._phase(request, "unmask " + ",".join(sent), lambda p: p.unmask(sent, signatures))

    def train_trees(self, request: dict) -> dict:
        """This institution's XGBoost worker for one training: its rows, encoded natively with the run's layout,
        its node certificate; the coordinator's federated server sums the workers' histograms. Until the training
        ends; rank 0 returns the trees (every worker holds the same) and the federated validation history."""
        from fed_trees.spec import TreeSpec
        from fed_trees.training import TreeTrainingFailed, run_worker
        from fed_trees.worker import booster_name

        self._check_schema(request)
        policy = self.config.policy
        if policy.require_secure_aggregation:
            raise NodeRefusal(
                f"institution '{self.name}' sends only masked sums (policy.require_secure_aggregation); "
                f"XGBoost's federated server sees each institution's gradient histograms"
            )
        spec = TreeSpec.from_dict(request["spec"])
        if "gradient_boosted_trees" not in policy.model_kinds:
            raise NodeRefusal(f"institution '{self.name}' trains only {policy.model_kinds}, not gradient_boosted_trees")
        if spec.rounds > policy.max_rounds:
            raise NodeRefusal(
                f"institution '{self.name}' agreed to at most {policy.max_rounds} rounds, the run plans {spec.rounds}"
            )
        if policy.require_privacy != "none":
            raise NodeRefusal(
                f"institution '{self.name}' trains only with record-level differential privacy, which "
                f"trees do not have (policy.require_privacy)"
            )
        [data] = self._admitted(request).tree_data(self._space(request))
        tls, rank, work = self.config.tls, int(request["rank"]), self.config.work_dir / "trees" / request["run_key"]
        self.run_records.begin(request["run_key"], request["layout"], request.get("champion"))
        try:
            result = run_worker(
                data,
                spec,
                work,
                rank=rank,
                world_size=int(request["world_size"]),
                server=request["server"],
                ca=tls.ca,
                cert=tls.cert,
                key=tls.key,
            )
        except TreeTrainingFailed as error:
            raise NodeRefusal(f"institution '{self.name}': {error}") from None
        grown = hashlib.sha256((work / booster_name(rank)).read_bytes()).hexdigest()
        self.run_records.update(request["run_key"], lambda record: setattr(record, "booster", grown))
        if result is None:
            return {"rows": int(len(data.y_fit))}
        return {
            "rows": int(len(data.y_fit)),
            "booster": np.frombuffer(result.booster.read_bytes(), dtype=np.uint8),
            "rounds": result.rounds,
            "best_round": result.best_round,
            "stopped_early": result.stopped_early,
        }

    def tree_progress(self, request: dict) -> dict:
        """The boosting rounds so far of a tree training this node's worker takes part in: the federated validation
        log loss and AUC (over every worker's validation rows) that rank 0's worker prints each round."""
        run_key = str(request.get("run_key") or "")
        if self.run_records.get(run_key) is None:
            raise NodeRefusal(f"institution '{self.name}' takes part in no tree training {run_key or '(none named)'}")
        from fed_trees.training import round_figures

        log = self.config.work_dir / "trees" / run_key / f"{self.name}.log"
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        return {"rounds": [figures for figures in map(round_figures, lines) if figures is not None]}

    def evaluate(self, request: dict) -> dict:
        """Score the run's models on its holdout (exported models: data, loaded with this node's own code): only
        the challenger this node helped train and the champion named when the run began, at most
        policy.max_evaluations_per_run times per run; only metrics and curve aggregates go back."""
        self._check_schema(request)
        run_key = str(request.get("run_key") or "")
        limit = self.config.policy.max_evaluations_per_run
        if self.run_records.get(run_key) is None:
            raise NodeRefusal(
                f"institution '{self.name}' evaluates only the models of a training it took part in; "
                f"it took part in no run {run_key or '(none named)'}"
            )
        record = self.run_records.update(run_key, lambda r: setattr(r, "evaluations", r.evaluations + 1))
        if record.evaluations > limit:
            raise NodeRefusal(
                f"institution '{self.name}' evaluates the models of run {run_key} at most {limit} "
                f"times (policy.max_evaluations_per_run)"
            )
        consortium = self._admitted(request)
        with tempfile.TemporaryDirectory(prefix="fedrisk-node-models-") as scratch:
            models = {}
            for role, archive in request["models"].items():
                target = Path(scratch) / role
                with zipfile.ZipFile(io.BytesIO(bytes(np.asarray(archive, dtype=np.uint8)))) as bundle:
                    unexpected = sorted(set(bundle.namelist()) - set(MODEL_FILES))
                    if unexpected:
                        raise NodeRefusal(
                            f"institution '{self.name}': a model holds files other than an exported "
                            f"model's: {unexpected}"
                        )
                    bundle.extractall(target)
                self._check_tied(run_key, record, role, target)
                models[role] = str(target)
            with self.lock:
                evaluation = consortium.evaluate(
                    self.name, self.schema, Split(**request["split"]), models, EvaluationConfig(**request["evaluation"])
                )
        return asdict(evaluation)

    def _check_tied(self, run_key: str, record, role: str, directory: Path) -> None:
        """A model is scored only if it is this run's: the champion by the digest named when the run began, the
        challenger by its layout and the weights (or trees) this node took part in training."""
        from riskmodel import model as exported

        refused = f"institution '{self.name}' evaluates only the models of run {run_key}: the {role} sent"
        if role == "champion":
            if record.champion is None or exported.files_digest(directory) != record.champion:
                raise NodeRefusal(f"{refused} is not the champion named when the run began")
            return
        if role != "challenger":
            raise NodeRefusal(f"{refused} is neither its challenger nor its champion")
        manifest = json.loads((directory / exported.MANIFEST).read_text())
        if manifest.get("layout") != json.loads(record.layout or "null"):
            raise NodeRefusal(f"{refused} encodes the features with another layout than the run's")
        if manifest.get("engine") == "xgboost":
            trees = directory / exported.XGBOOST_FILE
            tied = trees.is_file() and hashlib.sha256(trees.read_bytes()).hexdigest() == record.booster
        else:
            with self.lock:
                weights = exported.load(directory).predictor.get_weights()
            tied = weights_digest(weights) in record.weights
        if not tied:
            raise NodeRefusal(f"{refused} holds weights this node never trained or validated in that run")
