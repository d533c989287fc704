"""Federated tuning: trials are real federated trainings (Prefect subflows, MLflow child runs) judged by the
federated validation AUC; a trial below its peers' median is pruned; the best trial's model competes under the same
promotion policy, and the version's lineage names the search and the winning settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.retrain import retrain
from tests.conftest import run_config

pytestmark = pytest.mark.usefixtures("prefect_api")
TREES = {"engine": "xgboost", "rounds": 30, "max_depth": 3, "learning_rate": 0.2, "early_stopping": {"patience": 5}}
# Stumps at a small learning rate learn little in 30 trees: once two trials finished, such a trial falls below
# their median and is pruned.
SEARCH = {
    "max_depth": {"choices": [1, 4]},
    "learning_rate": {"choices": [0.01, 0.3]},
}


def _three(small_consortium) -> dict[str, Path]:
    return {n: small_consortium[n] for n in ("alder_bank", "birch_credit_union", "cedar_savings")}


def _trial_flow_runs(model_name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["tuning-trial"])),
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=f"{model_name} trial ")),
        )


def _training_states(flow_runs: list) -> dict[int, tuple[str, str]]:
    """Each trial's train-federated task run: its state type and message, by trial number."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    found = {}
    with get_client(sync_client=True) as client:
        for run in flow_runs:
            [task] = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["train-federated"])),
            )
            found[int(run.name.rsplit(" ", 1)[1])] = (task.state.type.value, task.state.message or "")
    return found


def test_tuned_trees_are_the_best_trial_with_each_trial_a_subflow_and_a_child_run(small_consortium, tracking_uri):
    config = run_config(
        _three(small_consortium),
        model_name="tuned_trees",
        quorum=3,
        seed=1,
        training=TREES,
        tuning={"trials": 6, "startup_trials": 2, "warmup_rounds": 3, "parameters": SEARCH},
    )
    summary = retrain(config)
    client = MlflowClient(tracking_uri)
    version = client.get_model_version("tuned_trees", summary.registration.version)
    tags = client.get_run(version.run_id).data.tags
    children = client.search_runs(
        [client.get_run(version.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{version.run_id}'",
    )
    states = {int(r.data.tags["tuning.trial"]): r.data.tags["tuning.state"] for r in children}
    assert sorted(states) == [1, 2, 3, 4, 5, 6]
    pruned = [n for n, state in states.items() if state == "pruned"]
    assert pruned and all(n > 2 for n in pruned)  # never before two trials finished
    assert tags["tuning.trials"] == f"6 of 6 ({len(pruned)} pruned)"
    scores = {
        int(r.data.tags["tuning.trial"]): r.data.metrics["score_validation_auc"]
        for r in children
        if r.data.tags["tuning.state"] == "complete"
    }
    best = max(scores, key=lambda n: (scores[n], -n))
    assert tags["tuning.best_trial"] == str(best)
    # The winner's settings are the version's: its config, its lineage, the model trained.
    settings = {r.data.tags["tuning.trial"]: r.data.params for r in children}[str(best)]
    assert tags["tuning.best.max_depth"] == settings["max_depth"]
    assert (
        summary.training.best_round
        and client.get_run(version.run_id).data.params["training.max_depth"] == (settings["max_depth"])
    )
    # Judged by the federated validation AUC of its exported round, never by a holdout.
    best_round = next(r for r in summary.training.rounds if r["round"] == summary.training.best_round)
    assert scores[best] == pytest.approx(best_round["validation_auc"])
    assert scores[best] != pytest.approx(summary.weighted["roc_auc"])
    trial_runs = _trial_flow_runs("tuned_trees")
    assert sorted(run.name for run in trial_runs) == [f"tuned_trees trial {n}" for n in range(1, 7)]
    # A pruned trial's training is Cancelled in Prefect with the pruner's reason, not Failed; the others Completed.
    trainings = _training_states(trial_runs)
    for n, (state, message) in trainings.items():
        if n in pruned:
            assert state == "CANCELLED" and f"trial {n} pruned after round" in message, (n, state, message)
        else:
            assert state == "COMPLETED", (n, state, message)
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "plots")}
    assert "plots/tuning.png" in artifacts
    card = Path(client.download_artifacts(version.run_id, "model_card.html")).read_text()
    assert (
        f"These settings won a federated tuning study: 6 of 6 ({len(pruned)} pruned) trials; the best, trial {best}"
        in card
    )
    # It competed as any challenger does: the first version has no champion to beat.
    assert summary.registration.promoted


def test_under_differential_privacy_the_trials_share_the_runs_epsilon_and_the_ledger_charges_their_sum(
    small_consortium, tracking_uri
):
    config = run_config(
        _three(small_consortium),
        model_name="tuned_private",
        quorum=3,
        seed=3,
        training={"rounds": 3, "batch_size": 128},
        privacy={"mechanism": "record_level", "target_epsilon": 2.0},
        tuning={"trials": 2, "pruning": False, "parameters": {"client_learning_rate": {"low": 0.05, "high": 0.5}}},
    )
    summary = retrain(config)
    client = MlflowClient(tracking_uri)
    run = client.get_run(summary.registration.run_id)
    trials = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(trials) == 2
    for name in _three(small_consortium):
        each = [t.data.metrics[f"privacy/epsilon/{name}"] for t in trials]
        assert all(0 < epsilon <= 1.0 + 1e-6 for epsilon in each)  # a trial spends at most 2.0 / 2
        assert float(run.data.tags[f"privacy.epsilon.{name}"]) == pytest.approx(sum(each), abs=1e-4)
        assert summary.privacy.institution(name).epsilon == pytest.approx(sum(each)) and sum(each) <= 2.0 + 1e-6
