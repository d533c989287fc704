"""Federated tuning: a study of `tuning.trials` trainings, each a Prefect subflow (`tuning-trial`) over the admitted
institutions with the settings Optuna suggests, judged by its federated validation AUC (never a holdout). A trial
whose AUC falls below the median of earlier trials at the same round is pruned. The best trial's model is the
run's challenger: evaluated on the holdouts and judged by the same promotion policy as any other."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from consortium.protocol import Consortium
from contract.data import fit_rows
from engines.privacy import PrivacyPlan, plan_privacy, spent_privacy
from engines.tuning import Trial, TrialPruned, Tuning, describe, new_study, round_auc, suggest, trial_score
from errors import FedriskError
from flows.lock import LockHold
from riskmodel.scaling import Scaling
from runconfig import RunConfig, search_space
from tasks.training import train_federated


class TuningFailed(FedriskError, RuntimeError):
    """No trial produced a model to compete: nothing is registered."""


@flow(name="tuning-trial", flow_run_name="{model_name} trial {number}", validate_parameters=False)
def tuning_trial(
    model_name: str,
    number: int,
    settings: dict[str, Any],
    config: RunConfig,
    training: Any,
    consortium: Any,  # consortium.protocol.Consortium (a Protocol: Prefect cannot build a validator from it)
    features: Any,
    trial_dir: Path,
    isolation: Any,
    training_key: str,
    lock: LockHold,
    trial: Any,
    privacy: PrivacyPlan | None = None,
) -> Trial:
    """One federated training with the trial's settings: its rounds reported to the study as they come (the pruner
    may end it), its outcome returned. Rows stay where they are; only summed validation metrics reach the study.
    `privacy`: the trial's share of the run's differential privacy (engines.privacy.plan_privacy with a share)."""
    logger = get_run_logger()
    logger.info("trial %d: %s", number, describe(settings))
    seen: list[dict] = []
    started = time.monotonic()

    def report(metrics: dict) -> None:
        seen.append(metrics)
        auc = round_auc(metrics)
        if auc is None:
            return
        trial.report(auc, metrics["round"])
        if config.tuning.pruning and trial.should_prune():
            raise TrialPruned(
                f"trial {number} pruned after round {metrics['round']}: federated validation AUC {auc:.4f} is below "
                f"the median of earlier trials at that round"
            )

    # A pruned trial's training ends Cancelled in Prefect, with the pruner's reason (a decision, not a failure).
    state = train_federated(
        model_name,
        consortium,
        features.space,
        training=training,
        positive_weight=features.positive_weight,
        model_dir=trial_dir / "model",
        checkpoint_dir=trial_dir / "checkpoints",
        isolation=isolation,
        scaling=Scaling(**config.scorecard.model_dump()),
        run_key=training_key,
        lock_check=lock.verify,
        after_round=report,
        privacy=privacy,
        return_state=True,
    )
    if state.is_cancelled():
        logger.info("%s", state.message)
        seconds = time.monotonic() - started
        # Its rounds so far were trained with noise: every institution counted in each (a bound under sampling).
        spent = spent_privacy(privacy, {i.institution: len(seen) for i in privacy.institutions}) if privacy else None
        return Trial(
            number, settings, "pruned", None, seen, seconds, training_key, None, training, str(state.message), spent
        )
    outcome = state.result()
    score = trial_score(outcome)
    state = "complete" if score is not None else "failed"
    logger.info(
        "trial %d: federated validation AUC %s at round %d of %d",
        number,
        f"{score:.4f}" if score is not None else "unknown (a single class)",
        outcome.best_round,
        len(outcome.rounds),
    )
    seconds = time.monotonic() - started
    spent = spent_privacy(privacy, outcome.rounds_trained, outcome.charged) if privacy else None
    return Trial(number, settings, state, score, outcome.rounds, seconds, training_key, outcome, training, "", spent)


def tune(
    config: RunConfig,
    admitted: Consortium,
    champion: Path | None,
    features: Any,
    run_dir: Path,
    isolation: Any,
    training_key: str,
    lock: LockHold,
    private: bool = False,
) -> tuple[Tuning, Consortium]:
    """Run the study; return it and the consortium of its best trial (whose nodes evaluate that trial's model).
    Under differential privacy (`private`) each trial spends 1 / trials of the run's target epsilon and delta, so
    that together (basic composition) they spend at most the run's. TuningFailed when no trial finished with a
    validation AUC."""
    import optuna

    assert config.tuning is not None
    tuning, logger = config.tuning, get_run_logger()
    space = search_space(tuning, config.training)
    study = new_study(tuning, config.seed)
    deadline = time.monotonic() + tuning.timeout_minutes * 60 if tuning.timeout_minutes else None
    logger.info(
        "tuning: up to %d federated trials over %d institutions, searching %s; each judged by its federated "
        "validation AUC%s",
        tuning.trials,
        len(admitted.names),
        ", ".join(space),
        f", pruned below the median after {tuning.startup_trials} trials" if tuning.pruning else "",
    )
    trials, consortia = [], {}
    # validation_fraction is not tuned: every trial fits on the same rows
    fit = {name: fit_rows(count, config.training.validation_fraction) for name, count in features.counts.items()}
    for number in range(1, tuning.trials + 1):
        if deadline is not None and time.monotonic() > deadline:
            logger.info("tuning: %g minutes passed; no more trials after %d", tuning.timeout_minutes, number - 1)
            break
        asked = study.ask()
        settings, training = suggest(asked, space, config.training)
        key = f"{training_key}-trial-{number}"
        privacy = plan_privacy(config.privacy, training, fit, config.seed, 1.0 / tuning.trials) if private else None
        consortia[number] = admitted.for_run(key, champion)
        trial = tuning_trial(
            config.model_name,
            number,
            settings,
            config,
            training,
            consortia[number],
            features,
            run_dir / "trials" / str(number),
            isolation,
            key,
            lock,
            asked,
            privacy,
        )
        if trial.state == "complete":
            study.tell(asked, trial.score)
        else:
            states = optuna.trial.TrialState
            study.tell(asked, state=states.PRUNED if trial.state == "pruned" else states.FAIL)
        trials.append(trial)
    finished = [t for t in trials if t.state == "complete"]
    if not finished:
        raise TuningFailed(
            f"tuning {config.model_name}: none of {len(trials)} trials finished with a federated validation AUC; "
            f"nothing was registered"
        )
    best = max(finished, key=lambda t: (t.score, -t.number))
    logger.info(
        "tuning done: %d trials (%d pruned); the best is trial %d (%s), federated validation AUC %.4f: its model is "
        "the challenger",
        len(trials),
        sum(t.state == "pruned" for t in trials),
        best.number,
        describe(best.settings),
        best.score,
    )
    searched = {name: _described(r) for name, r in space.items()}
    method = (
        f"Optuna {optuna.__version__} TPE (seed {config.seed}); "
        + (
            f"median pruner after {tuning.startup_trials} trials, from round {tuning.warmup_rounds}; "
            if tuning.pruning
            else "no pruning; "
        )
        + "each trial judged by its federated validation AUC at its best round (no holdout)"
    )
    return Tuning(trials, best, searched, tuning.trials, method), consortia[best.number]


def _described(searched) -> str:
    if searched.choices is not None:
        return "one of " + ", ".join(str(c) for c in searched.choices)
    return f"{searched.low:g} to {searched.high:g}{' (log)' if searched.log else ''}"
