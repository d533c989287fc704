"""The engine registry: the one place where a name (the run config's `training.engine`) picks an engine."""

from __future__ import annotations

from engines.base import Engine
from engines.tff import TFF
from engines.xgboost import XGBOOST
from runconfig import TrainingConfig, TreeTrainingConfig

ENGINES: dict[str, Engine] = {TFF.name: TFF, XGBOOST.name: XGBOOST}


def engine_for(training: TrainingConfig | TreeTrainingConfig) -> Engine:
    """The engine that trains `training` (a run config's training section)."""
    return ENGINES[training.engine]
