"""How rounds take institutions: which are sampled each round (a seeded sampler), how long a round waits for
them (synchronous, a deadline, a buffer) and what became of each institution's update.

Only numbers here (no TensorFlow): the flow plans each institution's privacy for exactly the rounds it will be
sampled in, and the registry words each institution's rounds, before or without a training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ScheduleMode = Literal["synchronous", "deadline", "buffered"]
LateUpdates = Literal["drop", "discount"]


@dataclass(frozen=True)
class Schedule:
    """How a round waits for institutions. synchronous: for every sampled one. deadline: until `deadline_seconds`
    have passed and institutions holding `min_share` of the fit rows reported; an update that arrives later is
    applied in a later round, discounted by its staleness, or dropped (`late_updates`). buffered (FedBuff, Nguyen
    et al. 2022): a server step as soon as `buffer_size` updates have arrived, each institution starting again
    at once from the latest model. An update more than `max_staleness` versions old is dropped in either."""

    mode: ScheduleMode = "synchronous"
    deadline_seconds: float | None = None
    min_share: float = 0.5
    late_updates: LateUpdates = "discount"
    staleness_exponent: float = 0.5
    max_staleness: int = 4
    buffer_size: int = 2

    def discount(self, staleness: int) -> float:
        """The weight factor of an update `staleness` model versions old: 1/(1+s)^a (FedBuff's polynomial)."""
        return 1.0 / (1.0 + staleness) ** self.staleness_exponent

    def applies(self, staleness: int) -> bool:
        """Whether an update this old is applied (else dropped)."""
        if staleness <= 0:
            return True
        if staleness > self.max_staleness:
            return False
        return self.mode == "buffered" or self.late_updates == "discount"


# What happened to an institution in a round (counts; a round may apply its late update and a fresh one).
ON_TIME, LATE_APPLIED, LATE_DROPPED, MISSED = range(4)
PARTICIPATION = ("on time", "late, applied", "late, dropped", "missed the deadline")


def sample_clients(n_clients: int, per_round: int | None, seed: int, round_num: int) -> list[int]:
    """The institutions (indices) that train in `round_num`: all, or a seeded k of N."""
    if per_round is None or per_round >= n_clients:
        return list(range(n_clients))
    rng = np.random.default_rng([seed, round_num])
    return sorted(int(i) for i in rng.choice(n_clients, size=per_round, replace=False))


def rounds_sampled(n_clients: int, per_round: int | None, seed: int, rounds: int) -> list[int]:
    """In how many of rounds 1..`rounds` each institution (by index) is sampled: the most it can train in."""
    counts = [0] * n_clients
    for r in range(1, rounds + 1):
        for i in sample_clients(n_clients, per_round, seed, r):
            counts[i] += 1
    return counts
