"""The Prefect summary artifact: the decision with its checks, and links to the MLflow run and version."""

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows.settings import Settings


def test_the_summary_artifact_states_the_decision_and_links_to_mlflow(registered):
    with get_client(sync_client=True) as client:
        [latest] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-credit-registered"])),
            sort=ArtifactSort.CREATED_DESC, limit=1)
    markdown = latest.data
    registration = registered.second.registration
    ui = Settings().mlflow_ui_url
    assert (f"- MLflow run [{registration.run_id}]({ui}/#/experiments/{registration.experiment_id}/runs/"
            f"{registration.run_id})") in markdown
    assert (f"- Model `credit_registered` [version 2]({ui}/#/models/credit_registered/versions/2), "
            f"aliases: challenger") in markdown
    assert f"- Decision: {registration.reason}" in markdown
    for check in registration.checks:
        assert f"\n  - {check}\n" in markdown
    assert "| alder_bank | local_only |" in markdown and "| **weighted** | pooled |" in markdown


def test_the_training_sentence_says_which_limit_ended_training():
    from tasks.reporting import training_sentence
    from tasks.training import TrainingOutcome

    def outcome(rounds: int, stopped_early: bool) -> TrainingOutcome:
        return TrainingOutcome("m", [{}] * rounds, {}, best_round=rounds - 2, stopped_early=stopped_early,
                               resumed_from_round=0, positive_class_weight=1.0, rounds_trained={}, max_rounds=15)

    assert training_sentence(outcome(9, True)).startswith(
        "Trained 9 rounds (stopped early, before the limit of 15: validation loss stopped improving); exported round 7")
    assert training_sentence(outcome(15, True)).startswith(
        "Trained 15 rounds (stopped: validation loss stopped improving, at the limit of 15 rounds)")
    assert training_sentence(outcome(15, False)).startswith("Trained 15 rounds (the limit of 15 rounds reached)")
