"""What every training engine provides and returns, so that evaluation, promotion, registration, the model card,
scoring and lineage need not know which engine trained a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pandas as pd

    from consortium.protocol import Consortium
    from engines.privacy import PrivacyPlan
    from hostguard.loopback import Isolation
    from institution.statistics import FeatureSpace
    from riskmodel.scaling import Scaling
    from runconfig import BaselinesConfig, RunConfig


@dataclass(frozen=True)
class TrainingOutcome:
    """The candidate model (an exported model directory), per-round metrics, and how the run went."""

    model_path: str
    rounds: list[dict]
    examples: dict[str, int]
    best_round: int
    stopped_early: bool  # ended before its round limit (validation stopped improving); not when the limit ended it
    resumed_from_round: int
    positive_class_weight: float
    rounds_trained: dict[str, int]
    lost: dict[str, str] = field(default_factory=dict)  # institutions left out mid-training, and why
    engine: str = "tff"
    lineage: dict[str, str] = field(default_factory=dict)  # how the engine trained, as version tags
    max_rounds: int = 0  # the configured limit (0: unknown)
    charged: dict[str, tuple[float, float]] = field(default_factory=dict)  # each node's own (epsilon, delta)
    # under a deadline or a buffer: institution -> per round [on time, late applied, late dropped, missed]
    participation: dict[str, list[list[int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Architecture:
    """How the model card and the lineage describe what an engine trains and how updates were combined."""

    model: str  # "MLP [32, 16] (dropout 0.1)", "gradient-boosted trees (XGBoost, ...)"
    algorithm: str  # "fedavg", "XGBoost's federated mode"
    aggregation: str  # "robust", "gradient histograms summed by the federated server"
    kind: str  # model.kind tag: "mlp", "logistic_regression", "gradient_boosted_trees"


class Engine(Protocol):
    """One way of training the consortium's model. `training` is the engine's own section of the run config."""

    name: str  # the config's `training.engine`
    modules: tuple[str, ...]  # what its training imports (TensorFlow: seconds), imported early by a command

    def describe(self, training: Any) -> str:
        """The engine and what it trains, as a status line names it."""

    def architecture(self, config: RunConfig) -> Architecture:
        """What it trains and how, for the model card and the lineage tags."""

    def train(
        self,
        consortium: Consortium,
        space: FeatureSpace,
        training: Any,
        positive_weight: float,
        model_dir: Path,
        *,
        checkpoint_dir: Path | None = None,
        privacy: PrivacyPlan | None = None,
        isolation: Isolation | None = None,
        scaling: Scaling | None = None,
        on_round: Callable[..., None] | None = None,
        run_key: str = "",
        log: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> TrainingOutcome:
        """Train over the consortium's institutions where their rows are, in `space`; export the candidate to
        `model_dir`. `positive_weight` is the run's resolved loss weight of a positive example."""

    def baseline(
        self,
        fit: pd.DataFrame,
        validation: pd.DataFrame,
        space: FeatureSpace,
        training: Any,
        baselines: BaselinesConfig,
        positive_weight: float,
        model_dir: Path,
    ) -> str:
        """The same model trained on rows in one place (pooled, or one institution's own); its exported path."""
