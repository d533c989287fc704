"""What a node does: fedrisk's fixed per-institution operations on its own extract, nothing else.

Each operation is the function the pipeline runs in simulation (consortium.local.LocalConsortium, the
fed_models client work), called here with the request's typed values (node.messages); no code or computation
sent by the coordinator is ever run. What the institution agreed to is checked by node.policy, its privacy
ledger and round log are kept on its own disk by node.ledger (a restart loses nothing), and its side of secure
aggregation is node.participant; this module holds the operations and the runs in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from consortium.local import LocalConsortium
from contract.data import Extract
from institution.statistics import FeatureSpace
from institution.validation import EXPECTATIONS_DIR
from node import messages, wire
from node.config import NodeConfig
from node.ledger import PrivacyLedger, RoundLog
from node.messages import (
    BufferedRound,
    Describe,
    DevelopmentCounts,
    Evaluate,
    GroupCountsSum,
    Monitor,
    Prepare,
    SecureBegin,
    SecureConsistency,
    SecureMask,
    SecureShare,
    SecureUnmask,
    Statistics,
    TrainRound,
    TrainTrees,
    TreeProgress,
    Validate,
    ValidateRound,
)
from node.participant import SecureInput, SecureParticipation
from node.policy import NodeRefusal, Policy, UnknownRun
from node.reference import Reference
from node.runs import RunRecords, round_weights_digest, weights_digest
from riskmodel.model import ENGINE_FILES, MANIFEST
from runconfig import EvaluationConfig

MODEL_FILES = (MANIFEST, *ENGINE_FILES)


@dataclass
class _Run:
    """A training prepared at this node: its stages and this institution's encoded rows."""

    stages: object
    fit: object
    validation: object
    delta: float
    secure: bool = False  # trained under secure aggregation: no plain update or metric leaves for this run
    encoding: object = None  # node.secure.Encoding: how this run's updates enter secure sums (fixed at Prepare)


def _bins(space: FeatureSpace) -> list[dict]:
    """The development bins a model of a run over `space` must count (manifest entries): the node derives them
    from the run's feature space itself, as the export does."""
    from institution.monitoring import development_bins

    return [b.to_manifest() for b in development_bins(space)]


class NodeService:
    """An institution's operations on its own extract: one method per operation of node.messages.OPERATIONS."""

    def __init__(self, config: NodeConfig, expectations_dir: Path = EXPECTATIONS_DIR, isolation=None):
        self.config, self.schema = config, config.schema()
        self.name = config.institution
        self.extract = Extract(self.name, config.extract.path, dict(config.extract.columns))
        self.expectations_dir = Path(expectations_dir)
        self.isolation = isolation
        self.policy = Policy(config, self.schema)
        self.ledger = PrivacyLedger(config.work_dir / "ledger.json", self.name, config.policy)
        self.round_log = RoundLog(config.work_dir / "rounds")
        self.secure = SecureParticipation(config)
        self.runs: dict[str, _Run] = {}
        self.lock = threading.Lock()  # one training (or evaluation, monitoring) computation at a time
        self.validation_lock = threading.Lock()  # validation runs beside a training (a deadline, a buffer)
        self.run_records = RunRecords(config.work_dir / "runs")
        self.reference = Reference(config.work_dir / "reference.json")

    def answer(self, operation: str, plain: object):
        """Serve one request as it crossed: checked into its typed form (node.messages.parse: a WireError naming
        the field otherwise), then the operation's method. Returns a dict, or a message already encoded."""
        request = messages.parse(operation, plain)
        return getattr(self, request.method())(request)

    @contextmanager
    def _computing(self, lock: threading.Lock | None = None):
        """One computation of a kind at a time (`lock`, else the training lock), with TFF's context installed in
        this (gRPC worker) thread. TFF's worker runs a validation beside a training with the same results."""
        from fed_models import runtime

        with lock or self.lock:
            runtime.ensure_context(self.isolation)
            yield

    def _admitted(self, digest: str) -> LocalConsortium:
        """This institution's extract pinned to the digest the coordinator admitted (checked on every read)."""
        return LocalConsortium((self.extract.validated(digest),))

    def _space(self, layout: str, split, mean=(), std=()) -> FeatureSpace:
        """The run's feature space as the coordinator sent it (layout, split; mean and std for a network)."""
        from riskmodel.layout import Layout

        return FeatureSpace(self.schema, Layout.from_json(layout), split.split(), tuple(mean), tuple(std))

    def _run(self, run_key: str) -> _Run:
        if run_key not in self.runs:
            raise UnknownRun(f"institution '{self.name}' has no prepared run {run_key} (it restarted?)")
        return self.runs[run_key]

    # --- operations -----------------------------------------------------------------------------------
    def describe(self, request: Describe) -> dict:
        return {
            "institution": self.name,
            "schema": {"name": self.schema.name, "version": self.schema.version},
            "policy": self.config.policy.model_dump(),
        }

    def validate(self, request: Validate) -> dict:
        """The validation report and its page as they may be shared (counts, check and declared names), for the
        coordinator's run; example values, undeclared columns and the institution's own page stay in this node's
        log. A node that requires secure aggregation sends no profile and checks drift against its own reference."""
        from contract.data import InstitutionDataError, read_bytes
        from institution.validation import validate_extract

        self.policy.check_schema(request.schema)
        private = self.config.policy.require_secure_aggregation
        reference = request.reference
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

    def statistics(self, request: Statistics) -> dict:
        self.policy.check_schema(request.schema)
        self.policy.refuse_plain("statistics")
        return asdict(self._statistics(request))

    def _statistics(self, request: Statistics):
        return self._admitted(request.digest).statistics(
            self.name, self.schema, request.features, request.split.split()
        )

    def prepare(self, request: Prepare) -> dict:
        """Get ready for a training: check it against the policy, encode this institution's rows with the
        run's layout, build the TFF stages. Returns how many rows it trains on."""
        from fed_models.accounting import default_delta
        from fed_models.training import build_stages, spec_from_dict

        self.policy.check_schema(request.schema)
        spec = spec_from_dict(request.spec)
        self.policy.check_training(spec)
        space = self._space(request.layout, request.split, request.mean, request.std)
        runner = self._admitted(request.digest).training(space, request.run_key)
        [fit], [validation] = runner.clients, runner.validation
        with self._computing():
            stages = build_stages(spec, np.asarray(space.mean), np.asarray(space.std), n_clients=1)
        # Privacy is accounted at the node's own delta: the coordinator may ask for a smaller one, never a larger.
        own = self.config.policy.max_delta or default_delta(len(fit.y))
        delta = min(float(request.delta), own) if request.delta else own
        encoding = None
        if request.secure_aggregation:
            encoding = self._encoding(request.secure_encoding)
        else:
            self.policy.refuse_plain("model updates")
        self.runs[request.run_key] = _Run(stages, fit, validation, delta, request.secure_aggregation, encoding)
        self.run_records.begin(
            request.run_key, request.layout, request.champion, _bins(space), secure=request.secure_aggregation
        )
        return {
            "fit_rows": int(len(fit.y)),
            "rounds_trained": len(self.round_log.rounds(request.run_key)),
            "delta": delta,
        }

    def _encoding(self, plain: dict | None):
        """The run's secure encoding, sent once at Prepare (the same to every node, bound into its signed keys)."""
        from node.secure import Encoding
        from secagg.protocol import RULE_ENCODING, SecureAggregationError

        self.secure.require_rules()
        try:
            if not plain:
                raise SecureAggregationError(
                    "a run under secure aggregation must fix its encoding at Prepare", RULE_ENCODING
                )
            return Encoding.from_dict(plain)
        except SecureAggregationError as error:
            raise NodeRefusal(f"institution '{self.name}': {error}") from None

    def train_round(self, request: TrainRound) -> bytes | dict:
        """One round of this institution's client work, its update in the clear (no secure aggregation); with
        `hold` (a buffered run under secure aggregation) the update is kept for a later secure sum and only
        its public part answered."""
        prepared = self.runs.get(request.run_key)
        if request.hold:
            if prepared is None or not prepared.secure:
                raise NodeRefusal(
                    f"institution '{self.name}': run {request.run_key} holds no update for a secure sum "
                    f"(it was not prepared with secure aggregation)"
                )
            answer = wire.decode(self._train_round(request, secure=True))
            return {k: answer[k] for k in ("rounds_trained", "epsilon", "delta")}
        self.policy.refuse_plain("model updates", prepared is not None and prepared.secure)
        return self._train_round(request, secure=False)

    def _train_round(self, request: TrainRound, secure: bool) -> bytes:
        """One round of this institution's client work, once: the same round id again gets the same answer;
        with other weights it is refused (so privacy is charged for exactly what was trained), and a round
        trained for a secure sum is never answered in the clear (not even after a restart)."""
        from fed_models.dp_sgd import secure_rng
        from fed_models.training import client_round, weights_from_lists

        run_key, round_num = request.run_key, request.round
        digest = round_weights_digest(request.weights)
        trained = self.round_log.trained(run_key, round_num)
        if trained is not None:
            logged, answer = trained
            if logged["weights_sha256"] != digest:
                raise NodeRefusal(
                    f"institution '{self.name}': round {round_num} of run {run_key} was already trained "
                    f"from other global weights; a round is trained once"
                )
            if logged.get("secure") and not secure:
                raise NodeRefusal(f"institution '{self.name}' sends its model updates only through secure aggregation")
            return answer
        run = self._run(run_key)
        self.policy.check_round(run_key, run.stages.spec.rounds, round_num)
        self.run_records.saw_weights(run_key, request.weights["trainable"])
        rounds = len(self.round_log.rounds(run_key)) + 1
        epsilon = self._charge(run_key, run, rounds)
        with self._computing():
            update = client_round(
                run.stages, run.fit, weights_from_lists(request.weights), seed=request.client_seed, rng=secure_rng()
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
        self.round_log.keep(run_key, round_num, digest, secure, message)
        return message

    def _charge(self, run_key: str, run: _Run, rounds: int) -> float:
        """Epsilon of `rounds` rounds of this run at this node, charged to its ledger (0 without DP-SGD)."""
        from fed_models.accounting import record_level_epsilon, steps_per_round
        from fed_models.training import RecordLevelPrivacy

        spec = run.stages.spec
        if not isinstance(spec.privacy, RecordLevelPrivacy):
            return 0.0
        rows = len(run.fit.y)
        epsilon = record_level_epsilon(
            rows=rows,
            batch_size=spec.batch_size,
            steps=steps_per_round(rows, spec.batch_size, spec.local_epochs) * rounds,
            noise_multiplier=spec.privacy.noise_multipliers[self.name],
            delta=run.delta,
        )
        return self.ledger.charge(run_key, epsilon, run.delta, rounds)

    def validate_round(self, request: ValidateRound) -> dict:
        self.policy.refuse_plain("validation metrics", self._run(request.run_key).secure)
        return self._validate_round(request)

    def _validate_round(self, request: ValidateRound) -> dict:
        from fed_models.training import validation_metrics, weights_from_lists

        run = self._run(request.run_key)
        self.run_records.saw_weights(request.run_key, request.weights["trainable"])
        with self._computing(self.validation_lock):
            return {"metrics": validation_metrics(run.stages, run.validation, weights_from_lists(request.weights))}

    # --- secure aggregation: this node's input to a sum (node.participant runs its side of the protocol) ----------
    def secure_begin(self, request: SecureBegin) -> dict:
        """Compute this institution's input to a secure sum (a round's update and metrics, a validation's metric
        sums, or its statistics), keep it, and return fresh public keys signed with its TLS key together with
        the digest of the session's parameters. Refused outside its consortium's rules, for an input it already
        added to another sum, or for a run's round encoded other than the run fixed at Prepare."""
        retried = self.secure.retried(request)
        if retried is not None:
            return retried
        inner = request.inner()
        if isinstance(inner, TrainRound):
            added = self._round_input(inner, len(request.participants))
        elif isinstance(inner, BufferedRound):
            added = self._buffered_input(inner, len(request.participants))
        elif isinstance(inner, ValidateRound):
            added = self._validation_input(inner)
        elif isinstance(inner, Monitor):
            added = self._monitoring_input(inner)
        elif isinstance(inner, DevelopmentCounts):
            added = self._development_input(inner)
        elif isinstance(inner, GroupCountsSum):
            added = self._fairness_input(inner)
        else:
            added = self._statistics_input(inner)
        return self.secure.begin(request, added)

    def _secure_run(self, run_key: str, participants: int) -> _Run:
        """A run prepared for secure aggregation whose encoding holds a sum of `participants` inputs."""
        from secagg.protocol import RULE_ENCODING

        run = self._run(run_key)
        if not run.secure:
            raise NodeRefusal(f"institution '{self.name}': run {run_key} was prepared without secure aggregation")
        if participants > run.encoding.institutions:
            raise NodeRefusal(
                f"institution '{self.name}': {participants} participants, but run {run_key} encodes sums "
                f"of at most {run.encoding.institutions} (rule: {RULE_ENCODING})"
            )
        return run

    def _round_input(self, request: TrainRound, participants: int) -> SecureInput:

        run = self._secure_run(request.run_key, participants)
        answer = wire.decode(self._train_round(request, secure=True))
        raw, values, meta = self._round_values(answer, 1.0, run)
        bound = {
            "run_key": request.run_key,
            "round": request.round,
            "encoding": run.encoding.as_dict(),
            "weights": round_weights_digest(request.weights),
        }
        return SecureInput(
            values,
            run.encoding.specs(),
            raw,
            meta,
            bound,
            f"its update of round {request.round} of run {request.run_key}",
        )

    def _round_values(self, answer: dict, discount: float, run: _Run) -> tuple[dict, dict, dict]:
        """A trained round's answer as a secure sum's input: its exact values (what identifies it for the one-sum
        rule, whatever the discount), the encoded values with its weight times `discount`, and the public part."""
        from node import secure
        from secagg.protocol import SecureAggregationError

        raw = {
            "update": np.concatenate([np.ravel(u) for u in answer["update"]]),
            "sums": secure.flatten(answer["metrics"])[0],
            "weight": np.asarray([answer["weight"]]),
        }
        try:
            values, meta = secure.round_inputs(
                answer["update"], answer["weight"] * discount, answer["metrics"], run.encoding
            )
        except SecureAggregationError as error:
            raise NodeRefusal(f"institution '{self.name}': {error}") from None
        meta.update(rounds_trained=answer["rounds_trained"], epsilon=answer["epsilon"], delta=answer["delta"])
        return raw, values, meta

    def _buffered_input(self, request: BufferedRound, participants: int) -> SecureInput:
        """This node's held update in one server step of a buffered run: the round it trained and held, found by
        the weights digest the buffer names, its weight times the staleness discount (at most 1: a coordinator
        can only lower it). Every participant binds the same buffer into the sum's context."""

        run = self._secure_run(request.run_key, participants)
        entry = request.buffer.get(self.name)
        if entry is None or len(entry) != 3:
            raise NodeRefusal(
                f"institution '{self.name}' is not in the buffer of step {request.step} of run {request.run_key}"
            )
        round_num, digest, discount = int(entry[0]), str(entry[1]), float(entry[2])
        if not 0 < discount <= 1:
            raise NodeRefusal(f"institution '{self.name}': a staleness discount is in (0, 1], not {discount:g}")
        trained = self.round_log.trained(request.run_key, round_num)
        if trained is None or not trained[0].get("secure") or trained[0]["weights_sha256"] != digest:
            raise NodeRefusal(
                f"institution '{self.name}' holds no update of round {round_num} of run {request.run_key} trained "
                f"from weights {digest[:12]} for a secure sum"
            )
        raw, values, meta = self._round_values(wire.decode(trained[1]), discount, run)
        bound = {
            "run_key": request.run_key,
            "step": request.step,
            "encoding": run.encoding.as_dict(),
            "buffer": {name: list(e) for name, e in sorted(request.buffer.items())},
        }
        description = f"its update of round {round_num} of run {request.run_key}"
        return SecureInput(values, run.encoding.specs(), raw, meta, bound, description)

    def _validation_input(self, request: ValidateRound) -> SecureInput:
        from node import secure

        flat, structure = secure.flatten(self._validate_round(request)["metrics"])
        weights = round_weights_digest(request.weights)
        return SecureInput(
            {"sums": flat},
            {"sums": secure.SUMS},
            {"sums": flat},
            {"metrics": structure},
            {"run_key": request.run_key, "weights": weights},
            f"its validation metrics of run {request.run_key} for weights {weights[:12]}",
        )

    def _statistics_input(self, request: Statistics) -> SecureInput:
        from institution.statistics import statistics_vector
        from node import secure

        self.policy.check_schema(request.schema)
        statistics = self._statistics(request)
        values = {"sums": statistics_vector(statistics, self.schema, request.features)}
        bound = {"schema": asdict(request.schema), "features": list(request.features), "split": asdict(request.split)}
        return SecureInput(
            values,
            {"sums": secure.SUMS},
            values,
            {"count": statistics.count},
            bound,
            f"the statistics of its extract {request.digest[:12]}",
        )

    def secure_share(self, request: SecureShare) -> dict:
        return self.secure.share(request)

    def secure_mask(self, request: SecureMask) -> dict:
        return self.secure.mask(request)

    def secure_consistency(self, request: SecureConsistency) -> dict:
        return self.secure.consistency(request)

    def secure_unmask(self, request: SecureUnmask) -> dict:
        return self.secure.unmask(request)

    # --- trees and evaluation -------------------------------------------------------------------------
    def train_trees(self, request: TrainTrees) -> dict:
        """This institution's XGBoost worker for one training: its rows, encoded natively with the run's layout,
        its node certificate; the coordinator's federated server sums the workers' histograms. Until the training
        ends; rank 0 returns the trees (every worker holds the same) and the federated validation history."""
        from fed_trees.spec import TreeSpec
        from fed_trees.training import TreeTrainingFailed, run_worker
        from fed_trees.worker import booster_name

        self.policy.check_schema(request.schema)
        spec = TreeSpec.from_dict(request.spec)
        self.policy.check_trees(spec)
        space = self._space(request.layout, request.split, request.mean, request.std)
        [data] = self._admitted(request.digest).tree_data(space)
        tls, rank, work = self.config.tls, request.rank, self.config.work_dir / "trees" / request.run_key
        self.run_records.begin(request.run_key, request.layout, request.champion, _bins(space))
        try:
            result = run_worker(
                data,
                spec,
                work,
                rank=rank,
                world_size=request.world_size,
                server=request.server,
                ca=tls.ca,
                cert=tls.cert,
                key=tls.key,
            )
        except TreeTrainingFailed as error:
            raise NodeRefusal(f"institution '{self.name}': {error}") from None
        grown = hashlib.sha256((work / booster_name(rank)).read_bytes()).hexdigest()
        self.run_records.update(request.run_key, lambda record: setattr(record, "booster", grown))
        if result is None:
            return {"rows": int(len(data.y_fit))}
        return {
            "rows": int(len(data.y_fit)),
            "booster": np.frombuffer(result.booster.read_bytes(), dtype=np.uint8),
            "rounds": result.rounds,
            "best_round": result.best_round,
            "stopped_early": result.stopped_early,
        }

    def tree_progress(self, request: TreeProgress) -> dict:
        """The boosting rounds so far of a tree training this node's worker takes part in: the federated validation
        log loss and AUC (over every worker's validation rows) that rank 0's worker prints each round."""
        run_key = request.run_key
        if self.run_records.get(run_key) is None:
            raise NodeRefusal(f"institution '{self.name}' takes part in no tree training {run_key or '(none named)'}")
        from fed_trees.training import round_figures

        log = self.config.work_dir / "trees" / run_key / f"{self.name}.log"
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        return {"rounds": [figures for figures in map(round_figures, lines) if figures is not None]}

    def evaluate(self, request: Evaluate) -> dict:
        """Score the run's models on its holdout (exported models: data, loaded with this node's own code): only
        the challenger this node helped train and the champion named when the run began, at most
        policy.max_evaluations_per_run times per run; only metrics and curve aggregates go back."""
        self.policy.check_schema(request.schema)
        run_key = request.run_key
        if self.run_records.get(run_key) is None:
            raise NodeRefusal(
                f"institution '{self.name}' evaluates only the models of a training it took part in; "
                f"it took part in no run {run_key or '(none named)'}"
            )
        record = self.run_records.update(run_key, lambda r: setattr(r, "evaluations", r.evaluations + 1))
        self.policy.check_evaluations(run_key, record.evaluations)
        consortium = self._admitted(request.digest)
        with tempfile.TemporaryDirectory(prefix="fedrisk-node-models-") as scratch:
            models = {}
            for role, archive in request.models.items():
                target = self._unpacked(archive, Path(scratch) / role)
                self._check_tied(run_key, record, role, target)
                models[role] = str(target)
            with self.lock:
                evaluation = consortium.evaluate(
                    self.name, self.schema, request.split.split(), models, EvaluationConfig(**request.evaluation)
                )
            if "challenger" in models:
                from riskmodel import model as exported

                digest = exported.files_digest(Path(models["challenger"]))
                kept = asdict(evaluation.reference) if evaluation.reference is not None else None
                fair = {role: asdict(counts) for role, counts in evaluation.fairness.items()}

                def keep(r) -> None:
                    r.challengers[digest], r.fairness = kept, fair

                self.run_records.update(run_key, keep)
        prepared = self.runs.get(run_key)
        if self.config.policy.require_secure_aggregation or record.secure or (prepared is not None and prepared.secure):
            # This institution's own counts per grade and feature bin, and by protected group, are what secure
            # aggregation hides: under it they do not leave in the clear (the development reference is then a secure
            # sum; the fair-lending counts are not summed securely yet, and the promotion says so).
            evaluation = replace(evaluation, reference=None, fairness={})
        return asdict(evaluation)

    def _unpacked(self, archive, target: Path) -> Path:
        """A zipped exported model unpacked into `target`; refused if it holds any file but an exported model's."""
        with zipfile.ZipFile(io.BytesIO(bytes(np.asarray(archive, dtype=np.uint8)))) as bundle:
            unexpected = sorted(set(bundle.namelist()) - set(MODEL_FILES))
            if unexpected:
                raise NodeRefusal(
                    f"institution '{self.name}': a model holds files other than an exported model's: {unexpected}"
                )
            bundle.extractall(target)
        return target

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
        if record.bins is None or manifest.get(exported.BINS_KEY) != record.bins:
            # Its monitoring counts per bin leave the institution: bins narrower than the run's would count single
            # customers' values.
            raise NodeRefusal(
                f"{refused} counts features in other bins than the run's development bins (cut from the federated "
                f"statistics the run began with)"
            )
        if manifest.get("engine") == "xgboost":
            trees = directory / exported.XGBOOST_FILE
            tied = trees.is_file() and hashlib.sha256(trees.read_bytes()).hexdigest() == record.booster
        else:
            with self.lock:
                weights = exported.load(directory).predictor.get_weights()
            tied = weights_digest(weights) in record.weights
        if not tied:
            raise NodeRefusal(f"{refused} holds weights this node never trained or validated in that run")

    # --- monitoring ---------------------------------------------------------------------------------------------
    def monitor(self, request: Monitor) -> dict:
        """This period's monitoring counts of a challenger this node evaluated, in the clear (refused when the
        institution or the model's run uses secure aggregation), with this institution's own report's status and
        findings by name; the report itself stays in this node's work directory and log."""
        monitored = self._monitored(request)
        self.policy.refuse_plain("monitoring counts", monitored.secure)
        return {
            "counts": asdict(monitored.extract.counts),
            "rows": monitored.extract.rows,
            "not_counted": monitored.extract.not_counted,
            **monitored.summary,
        }

    def _monitoring_input(self, request: Monitor) -> SecureInput:
        from institution.monitoring import counts_vector
        from node import secure

        monitored = self._monitored(request)
        vector = counts_vector(monitored.extract.counts, monitored.bins)
        return SecureInput(
            {"sums": vector},
            {"sums": secure.SUMS},
            {"sums": vector},
            {"rows": monitored.extract.rows, "not_counted": monitored.extract.not_counted, **monitored.summary},
            {"model": monitored.digest, "period": request.period},
            f"its monitoring counts of model {monitored.digest[:12]} for {request.period}",
        )

    def _development_input(self, request: DevelopmentCounts) -> SecureInput:
        from institution.monitoring import MonitoringCounts, counts_vector

        record, bins = self._evaluated(request, "the development counts", lambda r: r.challengers.get(request.model))
        vector = counts_vector(MonitoringCounts(**record.challengers[request.model]), bins)
        return self._kept_input(request, vector, f"its development counts of model {request.model[:12]}")

    def _fairness_input(self, request: GroupCountsSum) -> SecureInput:
        from institution import fairness

        record, bins = self._evaluated(request, "counts by protected group", lambda r: r.fairness)
        kept = {role: fairness.FairnessCounts.from_json(counts) for role, counts in record.fairness.items()}
        vector = np.concatenate(
            [
                fairness.fairness_vector(kept.get("challenger"), self.schema, bins),
                fairness.fairness_vector(kept.get("champion"), self.schema, None),
            ]
        )
        return self._kept_input(request, vector, f"its counts by protected group for model {request.model[:12]}")

    def _evaluated(self, request: DevelopmentCounts | GroupCountsSum, what: str, kept) -> tuple:
        """The record of the run whose challenger `request.model` this node evaluated, with what it kept then
        (`kept(record)`), and the run's development bins; refused otherwise."""
        from riskmodel.bins import FeatureBins

        record = self.run_records.get(request.run_key)
        if record is None or request.model not in record.challengers or not kept(record):
            raise NodeRefusal(
                f"institution '{self.name}' adds {what} only of a challenger it evaluated: it evaluated no model "
                f"{request.model[:12]} in run {request.run_key or '(none named)'}"
            )
        return record, [FeatureBins.from_manifest(entry) for entry in record.bins or []]

    def _kept_input(self, request: DevelopmentCounts | GroupCountsSum, vector: np.ndarray, description: str):
        """What this node kept at evaluation, as its input to a secure sum bound to the run and the model."""
        from node import secure

        bound = {"run_key": request.run_key, "model": request.model}
        return SecureInput({"sums": vector}, {"sums": secure.SUMS}, {"sums": vector}, {}, bound, description)

    def _monitored(self, request: Monitor) -> _Monitored:
        """Count the node's monitoring extract with the model sent, if it is a challenger evaluated here (its
        development bins were then checked against the run's); write the institution's own report."""
        from institution.monitoring import MonitoringCounts, monitor_extract
        from riskmodel import model as exported
        from runconfig import MonitoringConfig

        self.policy.check_schema(request.schema)
        if self.config.monitoring is None:
            raise NodeRefusal(
                f"institution '{self.name}' has no monitoring extract: its node config names none (monitoring.path)"
            )
        with tempfile.TemporaryDirectory(prefix="fedrisk-node-monitor-") as scratch:
            directory = self._unpacked(request.model, Path(scratch) / "model")
            digest = exported.files_digest(directory)
            record = self.run_records.with_challenger(digest)
            if record is None:
                raise NodeRefusal(
                    f"institution '{self.name}' monitors only a model it evaluated as a training's challenger: "
                    f"model {digest[:12]} is none of them"
                )
            with self.lock:
                model = exported.load(directory)
            extract = monitor_extract(
                self.config.monitoring.path, self.schema, model, dict(self.config.monitoring.columns)
            )
        summary = {"status": "unknown", "findings": []}
        own = record.challengers[digest]
        if own is not None and extract.counts.total:
            from monitoring.report import monitoring_report

            report = monitoring_report(
                self.name, MonitoringCounts(**own), extract.counts, MonitoringConfig(**request.thresholds)
            )
            self._keep_report(request.period, digest, report)
            summary = {"status": report.status, "findings": report.findings}
        secure = self.config.policy.require_secure_aggregation or record.secure
        return _Monitored(digest, model.bins, extract, summary, secure)

    def _keep_report(self, period: str, digest: str, report) -> None:
        """The institution's own monitoring report, with its figures, in its work directory and log."""
        import logging
        import re

        from monitoring.report import report_markdown

        title = f"Monitoring of model {digest[:12]} at {self.name}, {period}"
        folder = self.config.work_dir / "monitoring"
        folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", period)[:40]
        (folder / f"{name}-{digest[:12]}.md").write_text(report_markdown(title, [report], []))
        logging.getLogger("fedrisk.node").info(
            "%s: %s%s", title, report.status, "".join(f"; {text}" for text in [*report.breaches, *report.shifts])
        )


@dataclass(frozen=True)
class _Monitored:
    """A Monitor request's counting: the model's digest and bins, the counts, the institution's own report's
    status and findings by name, and whether its counts leave only in secure sums."""

    digest: str
    bins: tuple
    extract: object  # institution.monitoring.MonitoredExtract
    summary: dict
    secure: bool
