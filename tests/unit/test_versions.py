"""What users see of the registry: a version whose registration did not finish is never listed, scored or
promoted, and the next retraining (holding the lock) settles it."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tracking.registry import promote_manually, settle_unfinished, use_tracking
from tracking.versions import REGISTRATION_TAG, list_versions, resolve_version


def _version(
    client: MlflowClient, experiment_id: str, state: str | None, decision: str = "promoted", finish: bool = True
) -> tuple[str, str]:
    """A registered version of model m as far as a registration got (`state`; None: before the tag existed)."""
    run = client.create_run(experiment_id)
    if finish:
        client.set_terminated(run.info.run_id, "FINISHED")
    tags = {"promotion.decision": decision, **({REGISTRATION_TAG: state} if state else {})}
    version = client.create_model_version("m", f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags)
    return str(version.version), run.info.run_id


@pytest.fixture
def registry(tracking_uri):
    experiment_id = use_tracking(tracking_uri, "m")
    client = MlflowClient()
    client.create_registered_model("m")
    return client, experiment_id


def test_an_unfinished_registration_is_marked_and_never_resolved_or_promoted(registry, tracking_uri):
    client, experiment = registry
    old, _ = _version(client, experiment, None)  # registered before the tag existed: complete
    client.set_registered_model_alias("m", "champion", old)
    half, _ = _version(client, experiment, "incomplete", finish=False)

    listed = {v.version: v.registration for v in list_versions(tracking_uri, "m")}
    assert listed == {old: "complete", half: "incomplete"}
    assert str(resolve_version(tracking_uri, "m", "champion", None).version) == old
    with pytest.raises(
        LookupError,
        match=rf"m/{half}: version {half}'s registration did not finish \(incomplete: its "
        r"retraining failed while registering it\); it is not used, and the next "
        r"retraining of m deletes it",
    ):
        resolve_version(tracking_uri, "m", None, half)
    with pytest.raises(ValueError, match=r"registration did not finish \(incomplete\); it cannot be promoted"):
        promote_manually(tracking_uri, "m", half, "because", "tester")


def test_the_next_retraining_deletes_a_half_version_completes_one_whose_champion_moved_and_ends_their_runs(registry):
    client, experiment = registry
    champion, _ = _version(client, experiment, "complete")
    client.set_registered_model_alias("m", "champion", champion)
    landed, landed_run = _version(client, experiment, "aliases pending", finish=False)
    client.set_registered_model_alias("m", "challenger", landed)
    client.set_registered_model_alias("m", "champion", landed)  # the last write had landed
    half, half_run = _version(client, experiment, "aliases pending", finish=False)
    client.set_registered_model_alias("m", "challenger", half)  # its champion move never came

    settled = settle_unfinished(client, "m")
    assert f"version {landed} marked complete (its final alias had moved before the failure)" in settled
    assert (
        f"version {half} deleted (registration aliases pending: its retraining failed while registering it)" in settled
    )
    assert sorted(str(v.version) for v in client.search_model_versions("name='m'")) == sorted([champion, landed])
    assert client.get_model_version("m", landed).tags[REGISTRATION_TAG] == "complete"
    assert {a: str(v) for a, v in client.get_registered_model("m").aliases.items()} == {
        "champion": landed,
        "challenger": landed,
    }
    assert [client.get_run(r).info.status for r in (landed_run, half_run)] == ["FINISHED", "FAILED"]
    assert settle_unfinished(client, "m") == []  # settled once
