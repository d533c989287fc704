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
