"""Federated tuning's search: which training settings a trial trains with (Optuna suggests them, within the config's
ranges or the engine's defaults) and how a trial is judged. Optuna sees only what a training reports each round:
the institutions' summed validation metrics, never a row or an institution's own figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from consortium.protocol import TrainingStopped
from runconfig import TrainingConfig, TreeTrainingConfig, TuningConfig, TuningRange, is_whole_setting, with_setting

if TYPE_CHECKING:
    import optuna

    from engines.base import TrainingOutcome
    from engines.privacy import PrivacyPlan

Training = TrainingConfig | TreeTrainingConfig


class TrialPruned(TrainingStopped):
    """A trial's validation AUC fell below its peers' median at the same round: it ends there (a decision)."""


@dataclass(frozen=True)
class Trial:
    """One trial as the study saw it: its settings, how it ended, its score and rounds; its training when it ran to
    the end (its model, its consortium for evaluation)."""

    number: int
    settings: dict[str, Any]
    state: str  # complete | pruned | failed
    score: float | None
    rounds: list[dict]
    seconds: float
    training_key: str
    outcome: TrainingOutcome | None = None
    training: Training | None = None
    reason: str = ""
    privacy: PrivacyPlan | None = None  # what it spent under differential privacy


@dataclass(frozen=True)
class Tuning:
    """The study's trials, the best one, and what it searched."""

    trials: list[Trial]
    best: Trial
    space: dict[str, str] = field(default_factory=dict)  # each setting searched, and over what
    budget: int = 0  # trials allowed
    method: str = ""  # sampler, pruner and score, as the version's lineage says them

    @property
    def pruned(self) -> int:
        return sum(t.state == "pruned" for t in self.trials)

    @property
    def spent(self) -> list[PrivacyPlan]:
        """Each trial's differential privacy spent (none without it): together, what the run spent."""
        return [t.privacy for t in self.trials if t.privacy is not None]


def describe(settings: dict[str, Any]) -> str:
    """A trial's settings as a log line says them: `learning_rate 0.0731, max_depth 5`."""
    return ", ".join(
        f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}" for name, value in settings.items()
    )


def suggest(trial: optuna.Trial, space: dict[str, TuningRange], training: Training) -> tuple[dict[str, Any], Training]:
    """The settings Optuna suggests for `trial` within `space`, and the training config they make."""
    settings: dict[str, Any] = {}
    for name, searched in space.items():
        if searched.choices is not None:
            labels = [str(choice) for choice in searched.choices]  # Optuna's choices are plain values
            settings[name] = searched.choices[labels.index(trial.suggest_categorical(name, labels))]
        elif is_whole_setting(training, name):
            assert searched.low is not None and searched.high is not None
            settings[name] = trial.suggest_int(name, int(searched.low), int(searched.high), log=searched.log)
        else:
            assert searched.low is not None and searched.high is not None
            settings[name] = trial.suggest_float(name, searched.low, searched.high, log=searched.log)
    for name, value in settings.items():
        training = with_setting(training, name, value)
    return settings, training


def new_study(tuning: TuningConfig, seed: int) -> optuna.Study:
    """An in-memory study maximising validation AUC: TPE seeded by the run's seed (the same config suggests the same
    trials), the median pruner once `startup_trials` trials finished, from `warmup_rounds` rounds on."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=tuning.startup_trials, n_warmup_steps=tuning.warmup_rounds)
        if tuning.pruning
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3), pruner=pruner
    )


def round_auc(metrics: dict) -> float | None:
    """A round's federated validation AUC, None when the round has none (not validated, or a single class)."""
    value = metrics.get("validation_auc")
    return None if value is None or value != value else float(value)


def trial_score(outcome: TrainingOutcome) -> float | None:
    """A finished trial's score: the federated validation AUC of the round it would export (its best round)."""
    best = next((r for r in outcome.rounds if r["round"] == outcome.best_round), None)
    return round_auc(best) if best is not None else None
