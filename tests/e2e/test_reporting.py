"""The Prefect summary artifact: the decision with its checks, and links to the MLflow run and version."""

import os
import re
import sys
from pathlib import Path

import httpx
import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from contract.schema import load_schema
from flows.cli import lineage, runs
from flows.settings import Settings
from tasks.reporting import summary_markdown
from tests.conftest import CHROMIUM, Browser, answers, cli_output, free_port, running, wait_for
from tracking.fairness import summed_fairness


def test_the_summary_artifact_states_the_decision_and_links_to_mlflow(registered):
    with get_client(sync_client=True) as client:
        [latest] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-credit-registered"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    markdown = latest.data
    registration = registered.second.registration
    ui = Settings().mlflow_ui_url
    assert (
        f"- MLflow run [{registration.run_id}]({ui}/#/experiments/{registration.experiment_id}/runs/"
        f"{registration.run_id}), [model card]({ui}/#/experiments/{registration.experiment_id}/runs/"
        f"{registration.run_id}/artifactPath/model_card.html)"
    ) in markdown
    assert (
        f"- Model `credit_registered` [version 2]({ui}/#/models/credit_registered/versions/2), aliases: challenger"
    ) in markdown
    assert f"- Decision: {registration.reason}" in markdown
    for check in registration.checks:
        assert f"\n  - {check}\n" in markdown
    # The roles and metrics named as the card and the CLI name them (it said local_only and was cut at recall_at_fp…)
    assert (
        "| alder_bank | local-only (simulation) |" in markdown
        and "| **weighted** | pooled data (simulation) |" in markdown
    )
    assert "| institution | model | rows | ROC AUC | PR AUC | KS | log loss | Brier | ECE | recall at FPR |" in markdown


def test_prefect_runs_are_named_and_tagged_like_their_mlflow_runs_with_stable_task_names(registered):
    """In the Prefect UI a retraining reads as its MLflow run does: the model, its version and what started it;
    tagged so it can be filtered; its tasks named without random suffixes; its progress artifact keyed."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags, TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["model:credit_registered"])),
            sort=FlowRunSort.START_TIME_ASC,
        )
        first_run = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[runs[0].id]))
        tasks = {task.name for task in client.read_task_runs(task_run_filter=first_run)}
        [progress] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["training-credit-registered"])), limit=1
        )
    assert [run.name for run in runs] == ["credit_registered v1 manual", "credit_registered v2 manual"]
    assert [sorted(t for t in run.tags if ":" in t) for run in runs] == [
        ["model:credit_registered", "trigger:manual", f"version:{n}"] for n in (1, 2)
    ]
    tracking = mlflow.MlflowClient(registered.tracking_uri)
    mlflow_names = [
        tracking.get_run(s.registration.run_id).info.run_name for s in (registered.first, registered.second)
    ]
    assert [f"credit_registered {name}" for name in mlflow_names] == [run.name for run in runs]
    assert {"find-champion", "train-federated", "train-pooled-baseline", "register-model", "publish-summary"} <= tasks
    assert {"statistics-alder_bank", "evaluate-alder_bank", "local-baseline-alder_bank"} <= tasks
    assert progress.type == "progress" and progress.data == 100.0


def test_the_mlflow_experiment_and_run_describe_the_retraining(registered):
    """The experiment opens on its training runs with a description; each run has one, MLflow's own source and
    commit fields, and lasts as long as its retraining (not only its registration); no parameter says "None"."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from tracking.registry import EXPERIMENT_KIND_TAG, NOTE_TAG, TRAINING_EXPERIMENT

    tracking = mlflow.MlflowClient(registered.tracking_uri)
    registration = registered.first.registration
    experiment = tracking.get_experiment(registration.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_EXPERIMENT
    assert experiment.tags[NOTE_TAG].startswith("Federated retrainings of **credit_registered**")
    run = tracking.get_run(registration.run_id)
    note = run.data.tags[NOTE_TAG]
    assert note.startswith("Retraining of **credit_registered** that registered **version 1**: promoted to champion")
    assert f"ROC AUC {registered.first.weighted['roc_auc']:.4f}" in note and "alder_bank" in note
    assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["git.commit"]
    assert run.data.tags["mlflow.source.name"] == "fedrisk retrain (flows/retrain.py)"
    assert "None" not in run.data.params.values() and run.data.params["training.rounds"] == "8"
    with get_client(sync_client=True) as client:
        [flow_run] = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["model:credit_registered", "version:1"]))
        )
    flow_seconds = (flow_run.end_time - flow_run.start_time).total_seconds()
    run_seconds = (run.info.end_time - run.info.start_time) / 1000
    assert run_seconds > 0.8 * flow_seconds, (run_seconds, flow_seconds)  # validation to registration


def test_the_training_sentence_says_which_limit_ended_training():
    from engines.base import TrainingOutcome
    from tasks.reporting import training_sentence

    def outcome(rounds: int, stopped_early: bool) -> TrainingOutcome:
        return TrainingOutcome(
            "m",
            [{}] * rounds,
            {},
            best_round=rounds - 2,
            stopped_early=stopped_early,
            resumed_from_round=0,
            positive_class_weight=1.0,
            rounds_trained={},
            max_rounds=15,
        )

    assert training_sentence(outcome(9, True)).startswith(
        "Trained 9 rounds (stopped early, before the limit of 15: validation loss stopped improving); exported round 7"
    )
    assert training_sentence(outcome(15, False)).startswith("Trained 15 rounds (the limit of 15 rounds reached)")


# --- Every link a person is given opens: the summary artifact's and `fedrisk lineage`'s ---------------------

URI = re.compile(r"\b[a-z][a-z0-9+.-]*:/[^\s)|<>\]]*")  # any URI in a text (http://, file://, runs:/, models:/)
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.-]+/)+[\w.-]+")  # a path on the machine that wrote it


@pytest.fixture(scope="module")
def mlflow_ui(registered, tmp_path_factory):
    """`mlflow server` (UI and REST API) on the registered fixture's store, on loopback."""
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-ui") / "server.log"
    server = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        registered.tracking_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with running(server, dict(os.environ), log) as process:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(f"{base}/health"), process, log, "mlflow server")
        yield base


def _resolves(link: str, mlflow_base: str) -> bool:
    """An MLflow UI page whose run, artifact or model version the server has; a Prefect UI flow run the
    API knows; a runs:/ URI whose run or artifact the store has."""
    if link.startswith("runs:/"):
        run_id, _, artifact = link.removeprefix("runs:/").partition("/")
        return (
            bool(mlflow.artifacts.download_artifacts(link)) if artifact else bool(mlflow.MlflowClient().get_run(run_id))
        )
    if link.startswith(mlflow_base):
        assert answers(mlflow_base + "/", timeout=60), "the MLflow UI page itself"  # a busy 2-core CI is slow
        route = link.removeprefix(mlflow_base).removeprefix("/#/")
        api = f"{mlflow_base}/ajax-api/2.0/mlflow"
        if match := re.fullmatch(r"experiments/(\w+)\?workflowType=machine_learning", route):
            return httpx.get(f"{api}/experiments/get", params={"experiment_id": match.group(1)}, timeout=60).is_success
        if match := re.fullmatch(r"experiments/(\w+)/runs/(\w+)(?:/artifactPath/(.+))?", route):
            experiment, run_id, artifact = match.groups()
            run = httpx.get(f"{api}/runs/get", params={"run_id": run_id}, timeout=60).json()["run"]
            if run["info"]["experiment_id"] != experiment:
                return False
            if artifact:
                page = httpx.get(
                    f"{mlflow_base}/get-artifact", params={"path": artifact, "run_uuid": run_id}, timeout=60
                )
                return page.status_code == 200 and len(page.content) > 0
            return True
        if match := re.fullmatch(r"models/(\w+)/versions/(\d+)", route):
            name, version = match.groups()
            return (
                httpx.get(
                    f"{api}/model-versions/get", params={"name": name, "version": version}, timeout=60
                ).status_code
                == 200
            )
        return False
    if match := re.search(r"/runs/flow-run/([0-9a-f-]{36})$", link):
        with get_client(sync_client=True) as client:
            return client.read_flow_run(match.group(1)) is not None
    return False


def test_every_link_in_the_summary_artifact_and_lineage_is_http_or_runs_and_resolves(
    registered, mlflow_ui, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.tracking_uri)
    mlflow.set_tracking_uri(registered.tracking_uri)
    with get_client(sync_client=True) as client:
        [published] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-credit-registered"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    # Published with the configured MLflow UI base (FEDRISK_MLFLOW_UI_URL); the same links, for the UI this test
    # serves on the same store:
    configured = Settings().mlflow_ui_url
    assert all(link.startswith(configured) for link in URI.findall(published.data)), published.data
    summary = registered.second
    markdown = summary_markdown(
        summary.model_name,
        summary.validation,
        summary.evaluations,
        summary.registration,
        mlflow_ui,
        training=summary.training,
        privacy=summary.privacy,
        protected=load_schema("credit_default").protected_references,
        fairness=summed_fairness(summary.evaluations),  # in simulation: the institutions' counts, summed
    )
    assert markdown == published.data.replace(configured, mlflow_ui)
    assert "## Fair lending (new model, every holdout)" in markdown
    assert len(re.findall(r"\[checks\]\(", markdown)) == len(registered.data)  # each institution's checks page

    monkeypatch.setenv("FEDRISK_MLFLOW_UI_URL", mlflow_ui)
    buffer = cli_output(monkeypatch, width=400)
    lineage.lineage(reference=f"{registered.name}@challenger")
    traced = buffer.getvalue()
    buffer = cli_output(monkeypatch, width=400)
    runs.print_summary(summary)  # what `fedrisk retrain` and the demo print at the end
    printed = buffer.getvalue()
    assert all(f"\n{what}: http" in printed for what in ("Version", "MLflow run", "Model card")), printed
    assert "\nExperiment (every retraining): http" in printed
    drift = summary.validation[0].drift_checks  # the second retraining also checked drift: said, not a puzzle
    assert drift and f"checks: the suite's, and {drift} against each institution's last accepted extract" in printed

    for text in (markdown, traced, printed):
        links = URI.findall(text)
        assert links, text
        assert not ABSOLUTE_PATH.findall(URI.sub("", text)), text
        for link in links:
            assert link.startswith(("http://", "https://", "runs:/")), link
            assert _resolves(link, mlflow_ui), link


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless-browser test: Debian's chromium is not installed (apt-get install chromium)"
)
def test_the_mlflow_ui_opens_the_experiment_on_its_runs_and_the_run_on_its_description_and_metrics(
    registered, mlflow_ui, tmp_path
):
    """What a risk-model engineer sees in MLflow's own UI: the experiment's page lists the retrainings by version
    (not the GenAI overview with "Traces 0"), the run's page starts with its description and shows the headline
    metrics, the version's page the decision, the card's link the card itself."""
    from tracking.versions import MODEL_CARD_ARTIFACT, experiment_page_url, run_page_url

    registration = registered.second.registration
    browser = Browser(tmp_path / "profile", offline=False)
    try:
        session = browser.tab()
        experiment = experiment_page_url(mlflow_ui, registration.experiment_id)  # as the summary prints it
        runs = browser.text_once_shown(session, experiment, ["v1 manual", "v2 manual"], "mlflow-experiment")
        run = browser.text_once_shown(
            session,
            run_page_url(mlflow_ui, registration.experiment_id, registration.run_id),
            ["Retraining of credit_registered", "challenger/weighted/roc_auc"],
            "mlflow-run",
        )
        version = browser.text_once_shown(
            session,
            f"{mlflow_ui}/#/models/credit_registered/versions/2",
            ["Not promoted"],
            "mlflow-version",
        )
        card = browser.text_once_shown(
            session,
            run_page_url(mlflow_ui, registration.experiment_id, registration.run_id, MODEL_CARD_ARTIFACT),
            ["Model card: credit_registered version 2", "Promotion decision"],
            "mlflow-model-card",
        )
    finally:
        browser.close()
    assert "v1 manual" in runs and "v2 manual" in runs and "No data available" not in runs, runs[:2000]
    assert "Retraining of credit_registered that registered version 2" in run, run[:3000]
    logged = mlflow.MlflowClient(registered.tracking_uri).get_run(registration.run_id).data.metrics
    listed = [line for line in run.splitlines() if line in logged]
    assert listed[:4] == ["roc_auc", "pr_auc", "ks", "ece"], listed[:10]  # the headline figures first
    assert "Not promoted" in version, version[:2000]
    assert "Model card: credit_registered version 2" in card and "Holdout metrics per institution" in card, card[:2000]
