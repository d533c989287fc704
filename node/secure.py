"""Secure sums across nodes (secagg's protocol over the node service): what a node puts into a sum, and how
the coordinator runs one session through its four phases.

A round's sum holds two vectors: the update (32-bit ring, each node's update clipped to the agreed L2 bound
and multiplied by its share of the round's examples) and `sums` (128-bit, fixed point 2^-24): the share
itself, non-finite and clipped flags, and the training metrics' unfinalized sums. Federated validation and
the federated statistics are one `sums` vector each. Each institution's row count stays visible, as in its
validation report.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from secagg import ring
from secagg.protocol import Advertisement, Aggregator, SecureAggregationError
from secagg.ring import VectorSpec

SUMS_BITS, SUMS_SCALE = 128, 2.0**24
UPDATE_BITS = 32


def new_session(purpose: str) -> str:
    """A session id: never reused, so that keys and masks are never reused."""
    return f"{purpose}/{uuid.uuid4().hex}"


def flatten(tree) -> tuple[np.ndarray, object]:
    """Nested dicts/lists of arrays (unfinalized metrics) as one float64 vector and the structure to rebuild them."""
    if isinstance(tree, dict):
        parts = [(key, *flatten(value)) for key, value in tree.items()]
        return (np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)), \
            {"dict": [[key, structure] for key, _, structure in parts]}
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
        part = np.asarray(values[at:at + size], dtype=np.float64)
        return (np.rint(part) if dtype.kind in "iu" else part).astype(dtype).reshape(node["shape"]), at + size

    return build(structure, offset)[0]


def round_inputs(update: list[np.ndarray], weight: float, metrics: dict, clip_norm: float,
                 total_weight: float) -> tuple[dict[str, np.ndarray], dict]:
    """A node's round as secure-sum inputs: its update clipped to `clip_norm` (a non-finite one zeroed, with
    weight 0) and multiplied by its share of `total_weight`; the share and flags lead the `sums` vector."""
    flat = np.concatenate([np.asarray(u, dtype=np.float64).ravel() for u in update])
    metric_values, structure = flatten(metrics)
    finite = bool(np.all(np.isfinite(flat)))
    norm = float(np.linalg.norm(flat)) if finite else 0.0
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    share = min(1.0, max(0.0, weight / total_weight)) if finite and total_weight > 0 else 0.0
    if not finite or not np.all(np.isfinite(metric_values)):
        flat, metric_values = np.zeros_like(flat), np.zeros_like(metric_values)
    sums = np.concatenate([[share, 0.0 if finite else 1.0, 1.0 if factor < 1 else 0.0, norm], metric_values])
    return ({"update": flat * factor * share, "sums": sums},
            {"shapes": [list(np.shape(u)) for u in update], "metrics": structure})


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


def decode_round(sums: dict[str, np.ndarray], meta: dict, completed: int) -> RoundSum:
    share, non_finite, clipped, norm = sums["sums"][:4]
    total = sums["update"] / share if share > 0 else np.zeros_like(sums["update"])
    update, at = [], 0
    for shape in meta["shapes"]:
        size = int(np.prod(shape, dtype=np.int64))
        update.append(np.asarray(total[at:at + size], dtype=np.float32).reshape(shape))
        at += size
    finite = completed - int(round(non_finite))
    return RoundSum(update, float(share), unflatten(sums["sums"], meta["metrics"], 4), int(round(non_finite)),
                    int(round(clipped)), float(norm) / finite if finite else float("nan"), completed)


def specs_for(institutions: int, clip_norm: float) -> dict[str, dict]:
    """Bit width and scale of each vector, agreed before any value is known: the update's scale keeps the sum of
    `institutions` clipped updates from wrapping a 32-bit ring."""
    return {"update": {"bits": UPDATE_BITS, "scale": ring.scale_for(clip_norm, institutions, UPDATE_BITS)},
            "sums": {"bits": SUMS_BITS, "scale": SUMS_SCALE}}


@dataclass(frozen=True)
class SessionResult:
    sums: dict[str, np.ndarray]
    meta: dict[str, dict]  # each completing institution's public part (sizes, structure, row count)
    phases: dict[str, int]  # institutions that completed each phase
    sent: list[str]  # institutions whose input is in the sum

    def describe(self, asked: int, threshold: int) -> str:
        return ("secure sum: " + ", ".join(f"{phase} {n}/{asked}" for phase, n in self.phases.items())
                + f" (threshold {threshold})")


def run_session(names: list[str], indices: list[int], session: str, vectors: dict[str, dict],
                begin: Callable[[int], dict], each: Callable[[list[int], str, Callable[[int], object]], dict[int, object]],
                call: Callable[[int, str, dict], object], threshold: int, when: str) -> SessionResult:
    """One secure sum over the nodes `indices` of the `vectors` (name -> bits and scale, see `specs_for`):
    `begin(i)` is what node i adds (its operation and request), `each` runs a phase at several nodes in parallel
    (dropping those that fail), `call(i, operation, request)` one call. SecureAggregationError when fewer than
    `threshold` complete a phase."""
    common = {"session": session, "participants": [names[i] for i in indices], "threshold": threshold,
              "vectors": vectors}
    begun = each(indices, f"{when}: key exchange", lambda i: call(i, "SecureBegin", {**begin(i), **common}))
    metas = {i: answer["meta"] for i, answer in begun.items()}
    first = next(iter(begun.values()), None)
    sizes = first["sizes"] if first else {}
    for i, answer in begun.items():
        if answer["sizes"] != sizes:
            raise SecureAggregationError(f"institution '{names[i]}' sent vectors of sizes {answer['sizes']}, the "
                                         f"others {sizes}: they are not adding the same thing")
    specs = {name: VectorSpec(int(sizes[name]), **vectors[name]) for name in sizes}
    aggregator = Aggregator(session, threshold, specs)
    roster = aggregator.keys([Advertisement.from_dict(answer["keys"]) for answer in begun.values()])
    plain_roster = {name: advertisement.as_dict() for name, advertisement in roster.items()}
    shared = each(sorted(begun), f"{when}: sharing keys", lambda i: call(
        i, "SecureShare", {"session": session, "roster": plain_roster}))
    inboxes = aggregator.inboxes({names[i]: {to: bytes.fromhex(box) for to, box in answer["shares"].items()}
                                  for i, answer in shared.items()})
    masked = each(sorted(shared), f"{when}: masked inputs", lambda i: call(
        i, "SecureMask", {"session": session, "inbox": {sender: box.hex() for sender, box in
                                                          inboxes[names[i]].items()}}))
    sent = aggregator.collect({names[i]: {name: ring.from_bytes(data, specs[name])
                                          for name, data in answer["masked"].items()}
                               for i, answer in masked.items()})
    unmasked = each(sorted(masked), f"{when}: unmasking", lambda i: call(
        i, "SecureUnmask", {"session": session, "sent": sent}))
    sums = aggregator.total({names[i]: answer for i, answer in unmasked.items()})
    return SessionResult(sums, {names[i]: metas[i] for i in begun},
                         {"keys": len(begun), "shares": len(shared), "masked inputs": len(masked),
                          "unmasking": len(unmasked)}, sent)
