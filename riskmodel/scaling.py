"""A scorecard's points scaling: points to double the odds, and the score at the base odds."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Scaling:
    points_to_double_odds: float = 20.0
    base_score: float = 600.0
    base_odds: float = 50.0

    @property
    def factor(self) -> float:
        return self.points_to_double_odds / math.log(2)

    @property
    def offset(self) -> float:
        return self.base_score - self.factor * math.log(self.base_odds)

    def probability_at(self, points: float) -> float:
        """The bad probability whose score is `points` (points = offset + factor * ln(odds of good to bad))."""
        return 1.0 / (1.0 + math.exp((points - self.offset) / self.factor))
