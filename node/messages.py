"""What the coordinator may ask of a node: one typed request per operation, and the one table of operations.

The coordinator's client (consortium.nodes) builds these requests; the node (node.server) rebuilds each from the
wire and checks it field by field before its service sees it, so a request with a missing, mistyped or unknown
field is refused naming the field, and the service reads attributes, never a dict's keys. Arrays (weights, model
archives, standardization) cross as node.wire's tagged arrays and are typed `Any` here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

from contract.data import Split
from contract.schema import Schema
from node.wire import WireError

_STRICT = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


@dataclass(frozen=True, config=_STRICT)
class SchemaRef:
    """The schema a request is about: a node serves only its extract's."""

    name: str
    version: str | int

    @classmethod
    def of(cls, schema: Schema) -> SchemaRef:
        return cls(schema.name, schema.version)


@dataclass(frozen=True, config=_STRICT)
class SplitRef:
    """How every institution splits its rows (contract.data.Split), as it crosses."""

    holdout_fraction: float
    validation_fraction: float
    seed: int

    @classmethod
    def of(cls, split: Split) -> SplitRef:
        return cls(split.holdout_fraction, split.validation_fraction, split.seed)

    def split(self) -> Split:
        return Split(self.holdout_fraction, self.validation_fraction, self.seed)


class Request:
    """A request to a node; `operation` is its name on the wire (the gRPC method), `timeout` how long the
    coordinator waits for the answer (seconds)."""

    operation: ClassVar[str]
    timeout: ClassVar[int]

    @classmethod
    def method(cls) -> str:
        """The node service's method that serves it: the operation in snake case (TrainRound: train_round)."""
        return "".join(f"_{c.lower()}" if c.isupper() else c for c in cls.operation).lstrip("_")

    def plain(self) -> dict:
        """The request as it crosses (node.wire tags the arrays); its fields, not copied."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True, config=_STRICT)
class Describe(Request):
    """Who the node is: its institution, schema and policy."""

    operation = "Describe"
    timeout = 30


@dataclass(frozen=True, config=_STRICT)
class Validate(Request):
    """Validate the extract against the schema's suite; `reference`: the last accepted profile (drift checks)."""

    operation = "Validate"
    timeout = 600
    schema: SchemaRef
    reference: dict | None = None


@dataclass(frozen=True, config=_STRICT)
class Statistics(Request):
    """The admitted extract's training-split statistics (counts and sums) of `features`."""

    operation = "Statistics"
    timeout = 300
    schema: SchemaRef
    digest: str  # the extract validation admitted: every read checks it
    features: list[str]
    split: SplitRef


@dataclass(frozen=True, config=_STRICT)
class Prepare(Request):
    """Get ready for a TFF training: the run's settings (checked against the node's policy) and feature space."""

    operation = "Prepare"
    timeout = 600
    schema: SchemaRef
    digest: str
    run_key: str
    spec: dict  # fed_models.training.spec_as_dict
    mean: Any  # the feature space's standardization (arrays)
    std: Any
    layout: str  # riskmodel.layout.Layout.to_json
    split: SplitRef
    secure_aggregation: bool = False
    champion: str | None = None  # riskmodel.model.files_digest of the champion the run will evaluate
    delta: float | None = None  # the privacy plan's delta; the node accounts at its own when that is larger
    secure_encoding: dict | None = None  # node.secure.Encoding.as_dict, under secure aggregation


@dataclass(frozen=True, config=_STRICT)
class TrainRound(Request):
    """One round of the institution's client work from the global `weights`."""

    operation = "TrainRound"
    timeout = 900
    run_key: str
    round: int
    weights: dict  # fed_models.training.weights_as_lists
    client_seed: int
    # Under secure aggregation with a buffer: train now, keep the update for a later secure sum (BufferedRound)
    # and answer only its public part (rounds trained, privacy charged).
    hold: bool = False


@dataclass(frozen=True, config=_STRICT)
class ValidateRound(Request):
    """The institution's validation metrics of the global `weights`."""

    operation = "ValidateRound"
    timeout = 300
    run_key: str
    weights: dict


@dataclass(frozen=True, config=_STRICT)
class Evaluate(Request):
    """Score the run's models (exported model archives by role) on the holdout: metrics and curve aggregates."""

    operation = "Evaluate"
    timeout = 900
    schema: SchemaRef
    digest: str
    split: SplitRef
    run_key: str
    evaluation: dict  # runconfig.EvaluationConfig
    models: dict[str, Any]  # role -> zipped exported model (uint8 array)


@dataclass(frozen=True, config=_STRICT)
class TrainTrees(Request):
    """Run the institution's XGBoost worker against the coordinator's federated server until the training ends."""

    operation = "TrainTrees"
    timeout = 3600
    schema: SchemaRef
    digest: str
    layout: str
    split: SplitRef
    spec: dict  # fed_trees.spec.TreeSpec.as_dict
    run_key: str
    world_size: int
    rank: int
    server: str
    mean: Any  # the feature space's standardization: the model's development bins are cut from it
    std: Any
    champion: str | None = None


@dataclass(frozen=True, config=_STRICT)
class Monitor(Request):
    """Count this period's extract of the scoring population (the node's `monitoring` extract) with `model`, a
    model this node evaluated as a run's challenger: counts per grade and development bin; `thresholds`
    (runconfig.MonitoringConfig) judge the institution's own report, which the node keeps."""

    operation = "Monitor"
    timeout = 900
    schema: SchemaRef
    period: str
    model: Any  # zipped exported model (uint8 array)
    thresholds: dict


@dataclass(frozen=True, config=_STRICT)
class DevelopmentCounts(Request):
    """A secure sum's input only: this node's monitoring counts of its development rows for the challenger it
    evaluated in run `run_key` (riskmodel.model.files_digest `model`), which secure aggregation kept out of
    its Evaluate answer."""

    operation = "DevelopmentCounts"
    timeout = 60
    run_key: str
    model: str


@dataclass(frozen=True, config=_STRICT)
class BufferedRound(Request):
    """A secure sum's input only: the update this node trained and held (TrainRound with `hold`) as round
    `buffer[institution][0]` of run `run_key` from the weights whose digest is `buffer[institution][1]`, its weight
    times `buffer[institution][2]` (its staleness discount, at most 1): one server step of a buffered run. Every
    participant is sent the same buffer, which the sum's context binds."""

    operation = "BufferedRound"
    timeout = 60
    run_key: str
    step: int
    buffer: dict[str, list]  # institution -> [round, weights sha256, discount]


@dataclass(frozen=True, config=_STRICT)
class GroupCountsSum(Request):
    """A secure sum's input only: this node's counts by protected group of the challenger it evaluated in run
    `run_key` (files digest `model`) and of the run's champion, which secure aggregation kept out of Evaluate."""

    operation = "GroupCountsSum"
    timeout = 60
    run_key: str
    model: str


@dataclass(frozen=True, config=_STRICT)
class TreeProgress(Request):
    """The boosting rounds so far of a tree training the node's worker takes part in."""

    operation = "TreeProgress"
    timeout = 30
    run_key: str = ""


@dataclass(frozen=True, config=_STRICT)
class SecureBegin(Request):
    """Begin a secure sum of what `request` computes (one of SECURE_INPUTS, named by `added`): the node keeps its
    input and answers with signed public keys."""

    operation = "SecureBegin"
    timeout = 900
    session: str
    participants: list[str]
    threshold: int
    request: dict
    added: str  # what the sum adds: a key of SECURE_INPUTS

    def inner(
        self,
    ) -> TrainRound | BufferedRound | ValidateRound | Statistics | Monitor | DevelopmentCounts | GroupCountsSum:
        """The request whose answer this node adds, checked like any request."""
        if self.added not in SECURE_INPUTS:
            raise WireError(f"SecureBegin: field 'added': no secure sum adds {self.added!r}")
        return _typed(SECURE_INPUTS[self.added], self.request)


@dataclass(frozen=True, config=_STRICT)
class SecureShare(Request):
    operation = "SecureShare"
    timeout = 60
    session: str
    roster: dict[str, dict]  # each participant's signed keys (secagg.protocol.Advertisement.as_dict)


@dataclass(frozen=True, config=_STRICT)
class SecureMask(Request):
    operation = "SecureMask"
    timeout = 120
    session: str
    inbox: dict[str, str]  # sender -> encrypted share (hex)


@dataclass(frozen=True, config=_STRICT)
class SecureConsistency(Request):
    operation = "SecureConsistency"
    timeout = 60
    session: str
    sent: list[str]


@dataclass(frozen=True, config=_STRICT)
class SecureUnmask(Request):
    operation = "SecureUnmask"
    timeout = 60
    session: str
    sent: list[str]
    signatures: dict[str, str]  # participant -> signature on `sent` (hex)


# The one table of operations: the gRPC method name -> its request. node.server serves exactly these.
OPERATIONS: dict[str, type[Request]] = {
    request.operation: request
    for request in (
        Describe,
        Validate,
        Statistics,
        Prepare,
        TrainRound,
        ValidateRound,
        Evaluate,
        Monitor,
        TrainTrees,
        TreeProgress,
        SecureBegin,
        SecureShare,
        SecureMask,
        SecureConsistency,
        SecureUnmask,
    )
}
# What a secure sum may add: SecureBegin's `added` -> the request that computes the node's input.
SECURE_INPUTS: dict[str, type[Request]] = {
    "train_round": TrainRound,
    "buffered_round": BufferedRound,  # a secure sum's input only
    "validate_round": ValidateRound,
    "statistics": Statistics,
    "monitor": Monitor,
    "development_counts": DevelopmentCounts,  # a secure sum's input only: not an operation of its own
    "fairness_counts": GroupCountsSum,  # the same
}


def parse(operation: str, plain: object) -> Any:
    """The typed request of `operation` from what crossed; WireError naming each field that is missing, mistyped
    or unknown (or the operation, when there is none by that name)."""
    if operation not in OPERATIONS:
        raise WireError(f"no operation {operation!r}")
    return _typed(OPERATIONS[operation], plain)


def _typed(request: type[Request], plain: object) -> Any:
    operation = request.operation
    if not isinstance(plain, dict):
        raise WireError(f"{operation}: a request is an object of fields, not a {type(plain).__name__}")
    try:
        return request(**plain)
    except ValidationError as error:
        problems = "; ".join(
            f"field '{'.'.join(str(part) for part in problem['loc'])}': {problem['msg']}"
            for problem in error.errors(include_url=False, include_input=False)
        )
        raise WireError(f"{operation}: {problems}") from None
