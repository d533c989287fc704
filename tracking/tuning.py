"""Federated tuning in MLflow: a child run per trial under the version's run (its settings, its rounds' validation
metrics, how it ended), the study as JSON, and the version's tags naming the search and its best trial."""

from __future__ import annotations

from engines.tuning import Tuning

TRIALS_ARTIFACT = "tuning/trials.json"
STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
ROUND_KEYS = ("validation_auc", "validation_loss")


def tuning_tags(tuning: Tuning) -> dict[str, str]:
    """What a reviewer asks of a tuned version: how many trials of the budget ran (pruned ones too), what was
    searched and how, which trial won with what validation AUC and settings."""
    best = tuning.best
    return {
        "tuning.trials": f"{len(tuning.trials)} of {tuning.budget} ({tuning.pruned} pruned)",
        "tuning.method": tuning.method,
        "tuning.space": "; ".join(f"{name} {searched}" for name, searched in tuning.space.items()),
        "tuning.best_trial": str(best.number),
        "tuning.best_validation_auc": f"{best.score:.6f}" if best.score is not None else "",
        **{f"tuning.best.{name}": str(value) for name, value in best.settings.items()},
    }


def log_trials(client, experiment_id: str, parent_run_id: str, tuning: Tuning) -> None:
    """A child run per trial under the version's run (nested in the MLflow UI), and the study as JSON on it."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    for trial in tuning.trials:
        child = client.create_run(
            experiment_id,
            run_name=f"trial {trial.number}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                "tuning.trial": str(trial.number),
                "tuning.state": trial.state,
                "tuning.best": str(trial.number == tuning.best.number).lower(),
                **({"tuning.reason": trial.reason} if trial.reason else {}),
            },
        )
        metrics = [
            Metric(key, float(r[key]), 0, r["round"])
            for r in trial.rounds
            for key in ROUND_KEYS
            if r.get(key) is not None
        ]
        metrics += [Metric("seconds", trial.seconds, 0, 0), Metric("rounds_run", len(trial.rounds), 0, 0)]
        if trial.score is not None:
            metrics.append(Metric("score_validation_auc", trial.score, 0, 0))
        for spent in trial.privacy.institutions if trial.privacy is not None else []:
            metrics.append(Metric(f"privacy/epsilon/{spent.institution}", spent.epsilon, 0, 0))
        params = [Param(name, str(value)) for name, value in trial.settings.items()]
        client.log_batch(
            child.info.run_id, metrics=metrics, params=params, tags=[RunTag("tuning.key", trial.training_key)]
        )
        client.set_terminated(child.info.run_id, status=STATUS[trial.state])
    study = {
        "budget": tuning.budget,
        "space": tuning.space,
        "method": tuning.method,
        "best_trial": tuning.best.number,
        "trials": [
            {
                "number": t.number,
                "state": t.state,
                "score": t.score,
                "settings": t.settings,
                "seconds": t.seconds,
                "reason": t.reason,
                "rounds": t.rounds,
            }
            for t in tuning.trials
        ],
    }
    mlflow.log_dict(study, TRIALS_ARTIFACT)
