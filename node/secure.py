"""Secure sums across nodes (secagg's protocol over the node service): what a node puts into a sum, and how
the coordinator runs one session through its five phases.

A round's sum holds two vectors: the update (32-bit ring, each node's update clipped to the run's L2 bound
and multiplied by its share: its own examples over the run's weight bound) and `sums` (128-bit, fixed point
2^-24): the share itself, non-finite and clipped flags, and the training metrics' unfinalized sums. Federated
validation and the federated statistics are one `sums` vector each. How a run's updates are encoded is fixed
once, at Prepare, the same for every node (`Encoding`), and every node's signed keys carry it. Each
institution's row count stays visible, as in its validation report.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from node.messages import Request, SecureBegin, SecureConsistency, SecureMask, SecureShare, SecureUnmask
from secagg import ring
from secagg.protocol import RULE_ENCODING, Advertisement, Aggregator, SecureAggregationError
from secagg.ring import VectorSpec

SUMS_BITS, SUMS_SCALE = 128, 2.0**24
UPDATE_BITS = 32
SUMS = {"bits": SUMS_BITS, "scale": SUMS_SCALE}  # metric and statistic sums: fixed by the protocol, not the run


@dataclass(frozen=True)
class Encoding:
    """How a run's round updates enter secure sums, fixed once per run and the same for every node: each node
    clips its update to `clip_norm` (L2) and weights it by its own examples over `weight_bound` (at most 1, so
    no node can weigh more than one institution); the 32-bit ring is sized for `institutions` such updates."""

    clip_norm: float
    institutions: int
    weight_bound: float

    def __post_init__(self):
        if not (math.isfinite(self.clip_norm) and 0 < self.clip_norm <= 1e6):
            raise SecureAggregationError(f"clip norm {self.clip_norm} is not within (0, 1e6]", RULE_ENCODING)
        if not 3 <= self.institutions <= 10_000:
            raise SecureAggregationError(f"{self.institutions} institutions is not within [3, 10000]", RULE_ENCODING)
        if not (math.isfinite(self.weight_bound) and self.weight_bound >= 1):
            raise SecureAggregationError(f"weight bound {self.weight_bound} is not a count of examples", RULE_ENCODING)

    def specs(self) -> dict[str, dict]:
        """Bit width and scale of a round's vectors: the sum of `institutions` clipped, weighted updates never
        wraps the 32-bit ring."""
        return {
            "update": {"bits": UPDATE_BITS, "scale": ring.scale_for(self.clip_norm, self.institutions, UPDATE_BITS)},
            "sums": SUMS,
        }

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, plain: dict) -> Encoding:
        try:
            return cls(float(plain["clip_norm"]), int(plain["institutions"]), float(plain["weight_bound"]))
        except (KeyError, TypeError, ValueError) as error:
            raise SecureAggregationError(f"the run's secure encoding is malformed ({error!r})", RULE_ENCODING) from None


# Secure inputs that add the same thing under two names: a buffered run's held round update is a round's update,
# so its digest is one, and a second sum over it is refused whichever name asks for it.
SAME_INPUT = {"buffered_round": "train_round"}


def input_digest(operation: str, values: dict[str, np.ndarray]) -> str:
    """The identity of an input to a secure sum: its operation and exact values, before any encoding."""
    hasher = hashlib.sha256(operation.encode())
    for name in sorted(values):
        hasher.update(name.encode())
        hasher.update(np.ascontiguousarray(values[name], dtype=np.float64).tobytes())
    return hasher.hexdigest()


def new_session(purpose: str) -> str:
    """A session id: never reused, so that keys and masks are never reused."""
    return f"{purpose}/{uuid.uuid4().hex}"


def flatten(tree) -> tuple[np.ndarray, object]:
    """Nested dicts/lists of arrays (unfinalized metrics) as one float64 vector and the structure to rebuild them."""
    if isinstance(tree, dict):
        parts = [(key, *flatten(value)) for key, value in tree.items()]
        return (np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)), {
            "dict": [[key, structure] for key, _, structure in parts]
        }
    if isinstance(tree, (list, tuple)):
        parts = [flatten(value) for value in tree]
        return (np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)), {"list": [p[1] for p in parts]}
    original = np.asarray(tree)
    return original.astype(np.float64).ravel(), {"shape": list(original.shape), "dtype": original.dtype.name}


def unflatten(values: np.ndarray, structure, offset: int = 0):
    """The inverse of `flatten` (each array in its own dtype; integer counts rounded back)."""

    def build(node, at: int):
        if "dict" in node:
            built = {}
            for key, child in node["dict"]:
                built[key], at = build(child, at)
            return built, at
        if "list" in node:
            items = []
            for child in node["list"]:
                item, at = build(child, at)
                items.append(item)
            return items, at
        size = int(np.prod(node["shape"], dtype=np.int64))
        dtype = np.dtype(node["dtype"])
        part = np.asarray(values[at : at + size], dtype=np.float64)
        return (np.rint(part) if dtype.kind in "iu" else part).astype(dtype).reshape(node["shape"]), at + size

    return build(structure, offset)[0]


def round_inputs(
    update: list[np.ndarray], weight: float, metrics: dict, encoding: Encoding
) -> tuple[dict[str, np.ndarray], dict]:
    """A node's round as secure-sum inputs: its update clipped to the run's clip norm (a non-finite one zeroed,
    with weight 0) and multiplied by its share, its own examples over the run's weight bound; the share and
    flags lead the `sums` vector."""
    if weight > encoding.weight_bound:
        raise SecureAggregationError(
            f"its round weighs {weight:g} examples, more than the run's weight bound {encoding.weight_bound:g}",
            RULE_ENCODING,
        )
    flat = np.concatenate([np.asarray(u, dtype=np.float64).ravel() for u in update])
    metric_values, structure = flatten(metrics)
    finite = bool(np.all(np.isfinite(flat)))
    norm = float(np.linalg.norm(flat)) if finite else 0.0
    factor = min(1.0, encoding.clip_norm / norm) if norm > 0 else 1.0
    share = min(1.0, max(0.0, weight / encoding.weight_bound)) if finite else 0.0
    if not finite or not np.all(np.isfinite(metric_values)):
        flat, metric_values = np.zeros_like(flat), np.zeros_like(metric_values)
    sums = np.concatenate([[share, 0.0 if finite else 1.0, 1.0 if factor < 1 else 0.0, norm], metric_values])
    return (
        {"update": flat * factor * share, "sums": sums},
        {"shapes": [list(np.shape(u)) for u in update], "metrics": structure},
    )


@dataclass(frozen=True)
class RoundSum:
    """What the coordinator learns from a secure round: the weighted mean update, the metrics' sums, and counts."""

    update: list[np.ndarray]
    weight: float  # the summed shares of the institutions that completed
    metrics: dict
    non_finite: int
    clipped: int
    mean_norm: float
    institutions: int


def decode_round(sums: dict[str, np.ndarray], meta: dict, completed: int, encoding: Encoding) -> RoundSum:
    """The round's mean update from the sum, refused when the sum is more than `completed` honest nodes can add
    up to: a summed share outside [0, completed], or a weighted sum longer than the shares times the clip norm
    (an institution that sent an out-of-range weight or wrapped the ring)."""
    share, non_finite, clipped, norm = sums["sums"][:4]
    if not 0 <= share <= completed * (1 + 1e-6):
        raise SecureAggregationError(
            f"the round's summed weight is {share:g}, outside [0, {completed}] for "
            f"{completed} institution(s): an institution sent an out-of-range weight; the "
            f"round is refused"
        )
    spec = encoding.specs()["update"]
    slack = completed * math.sqrt(sums["update"].size) / spec["scale"]  # stochastic rounding: < 1/scale each
    length = float(np.linalg.norm(sums["update"]))
    if length > share * encoding.clip_norm * (1 + 1e-6) + slack:
        raise SecureAggregationError(
            f"the round's weighted update sum has norm {length:g}, more than its summed "
            f"weight {share:g} times the clip norm {encoding.clip_norm:g}: an institution "
            f"sent an out-of-range update; the round is refused"
        )
    total = sums["update"] / share if share > 0 else np.zeros_like(sums["update"])
    update, at = [], 0
    for shape in meta["shapes"]:
        size = int(np.prod(shape, dtype=np.int64))
        update.append(np.asarray(total[at : at + size], dtype=np.float32).reshape(shape))
        at += size
    finite = completed - int(round(non_finite))
    return RoundSum(
        update,
        float(share),
        unflatten(sums["sums"], meta["metrics"], 4),
        int(round(non_finite)),
        int(round(clipped)),
        float(norm) / finite if finite else float("nan"),
        completed,
    )


@dataclass(frozen=True)
class SessionResult:
    sums: dict[str, np.ndarray]
    meta: dict[str, dict]  # each completing institution's public part (sizes, structure, row count)
    phases: dict[str, int]  # institutions that completed each phase
    sent: list[str]  # institutions whose input is in the sum

    def describe(self, asked: int, threshold: int) -> str:
        return (
            "secure sum: "
            + ", ".join(f"{phase} {n}/{asked}" for phase, n in self.phases.items())
            + f" (threshold {threshold})"
        )


def run_session(
    names: list[str],
    indices: list[int],
    session: str,
    vectors: dict[str, dict],
    begin: Callable[[int], tuple[str, Request]],
    each: Callable[[list[int], str, Callable[[int], object]], dict[int, object]],
    call: Callable[[int, Request], Any],
    threshold: int,
    when: str,
) -> SessionResult:
    """One secure sum over the nodes `indices` of the `vectors` (name -> bits and scale, as each node derives them
    itself: `Encoding.specs` or `SUMS`): `begin(i)` is what node i adds (node.messages.SECURE_INPUTS' name and the
    request that computes it), `each` runs a phase at several nodes in parallel (dropping those that fail),
    `call(i, request)` one call.
    SecureAggregationError when fewer than the threshold (or three) complete a phase."""
    participants = [names[i] for i in indices]

    def begin_at(i: int):
        added, request = begin(i)
        return call(i, SecureBegin(session, participants, threshold, request.plain(), added))

    begun = each(indices, f"{when}: key exchange", begin_at)
    metas = {i: answer["meta"] for i, answer in begun.items()}
    first = next(iter(begun.values()), None)
    sizes = first["sizes"] if first else {}
    for i, answer in begun.items():
        if answer["sizes"] != sizes:
            raise SecureAggregationError(
                f"institution '{names[i]}' sent vectors of sizes {answer['sizes']}, the "
                f"others {sizes}: they are not adding the same thing"
            )
    specs = {name: VectorSpec(int(sizes[name]), **vectors[name]) for name in sizes}
    aggregator = Aggregator(session, threshold, specs)
    roster = aggregator.keys([Advertisement.from_dict(answer["keys"]) for answer in begun.values()])
    plain_roster = {name: advertisement.as_dict() for name, advertisement in roster.items()}
    shared = each(
        sorted(begun),
        f"{when}: sharing keys",
        lambda i: call(i, SecureShare(session, plain_roster)),
    )
    inboxes = aggregator.inboxes(
        {names[i]: {to: bytes.fromhex(box) for to, box in answer["shares"].items()} for i, answer in shared.items()}
    )
    masked = each(
        sorted(shared),
        f"{when}: masked inputs",
        lambda i: call(i, SecureMask(session, {sender: box.hex() for sender, box in inboxes[names[i]].items()})),
    )
    sent = aggregator.collect(
        {
            names[i]: {name: ring.from_bytes(data, specs[name]) for name, data in answer["masked"].items()}
            for i, answer in masked.items()
        }
    )
    signed = each(
        sorted(masked),
        f"{when}: consistency check",
        lambda i: call(i, SecureConsistency(session, sent)),
    )
    signatures = aggregator.consistency({names[i]: bytes.fromhex(answer["signature"]) for i, answer in signed.items()})
    plain_signatures = {name: signature.hex() for name, signature in signatures.items()}
    unmasked = each(
        sorted(signed),
        f"{when}: unmasking",
        lambda i: call(i, SecureUnmask(session, sent, plain_signatures)),
    )
    sums = aggregator.total({names[i]: answer for i, answer in unmasked.items()})
    return SessionResult(
        sums,
        {names[i]: metas[i] for i in begun},
        {
            "keys": len(begun),
            "shares": len(shared),
            "masked inputs": len(masked),
            "consistency": len(signed),
            "unmasking": len(unmasked),
        },
        sent,
    )
