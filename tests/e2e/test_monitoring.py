"""Champion monitoring on a registered model: the development reference its registration stored, one institution's
local check (`fedrisk monitor --model --input`), the consortium's monitoring flow (its MLflow run, the version's
tags, the Prefect artifact), counts equal to the pooled rows' and bad input refused with its reason."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import typer

from contract.schema import load_schema
from contract.synthetic import synthesize
from flows.cli import monitor as monitor_command
from flows.config import parse_config
from institution.monitoring import REFERENCE_ARTIFACT, DevelopmentReference, add_counts, monitor_extract
from riskmodel import model as exported
from tests.conftest import Browser, cli_output, requires_offline_browser
from tracking.monitoring import PAGE_ARTIFACT, STATUS_TAG, monitored_version, monitoring_experiment
from tracking.versions import list_versions

SCHEMA = load_schema("credit_default")
SHIFT = {"dune_finance": {"median_limit": 12_000, "default_rate": 0.6}}  # its limits fall, its defaults rise


@pytest.fixture(scope="module")
def store(registered, tmp_path_factory):
    """A copy of the registered model's store (monitoring writes runs and version tags; the shared one stays as it
    is), and two later months of the same four institutions: one like development, one where dune_finance moved."""
    root = tmp_path_factory.mktemp("monitored")
    _copy_store(Path(registered.tracking_uri.removeprefix("sqlite:///")).parent, root / "mlruns")
    stable = synthesize(root / "stable", 4, seed=31, rows_scale=0.25)
    shifted = synthesize(root / "shifted", 4, seed=32, rows_scale=0.25, changes=SHIFT)
    yield SimpleNamespace(
        uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        root=root,
        registered=registered,
        stable=stable,
        shifted=shifted,
    )
    _forget_artifact_locations()  # the next tests of this process read the shared store's runs by the same ids


def _copy_store(source: Path, target: Path) -> None:
    """A sqlite MLflow store (database and artifacts) copied whole, its artifact locations pointed at the copy:
    what monitoring writes (runs, the card of the version) stays out of the shared store."""
    import sqlite3

    shutil.copytree(source, target)
    old, new = (source / "artifacts").resolve().as_uri(), (target / "artifacts").resolve().as_uri()
    with sqlite3.connect(target / "mlflow.db") as database:
        for table, column in (
            ("experiments", "artifact_location"),
            ("runs", "artifact_uri"),
            ("model_versions", "storage_location"),
            ("logged_models", "artifact_location"),
        ):
            database.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
    _forget_artifact_locations()


def _forget_artifact_locations() -> None:
    """MLflow caches each run's artifact location by run id for the process: the copy's runs have the same ids."""
    from mlflow.tracking._tracking_service import utils

    utils._artifact_repos_cache.clear()


@pytest.fixture
def tracking(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    mlflow.set_tracking_uri(store.uri)
    return store


@pytest.fixture
def console(monkeypatch):
    return cli_output(monkeypatch, width=200)


def _monitor(**options) -> int:
    arguments = {"config": None, "model": None, "input": None, "institution": None, **options}
    try:
        monitor_command.monitor(**arguments)
    except typer.Exit as stop:
        return stop.exit_code
    return 0


def test_each_version_keeps_its_development_reference_from_every_development_row(tracking, tmp_path):
    monitored = monitored_version(tracking.uri, "credit_registered", "champion", None, tmp_path)
    reference = monitored.reference
    assert monitored.version == "1" and set(reference.institutions) == set(tracking.registered.data)
    for name, counts in reference.institutions.items():  # its training and holdout rows, scored by the new model
        rows = pd.read_csv(tracking.registered.data[name])
        assert counts.total == len(rows) and sum(counts.defaults) == rows[SCHEMA.label.column].sum()
        assert all(sum(bins) == counts.total for bins in counts.features.values())
    bins = exported.load_manifest_bins(monitored.model_path)  # fixed with the model: part of its files' digest
    inputs = [f for f in SCHEMA.features if f not in SCHEMA.protected_columns]  # the model's inputs
    assert [b.name for b in bins] == inputs == list(reference.consortium.features)
    assert reference == DevelopmentReference.from_json(mlflow.artifacts.load_dict(
        f"runs:/{monitored.run_id}/{REFERENCE_ARTIFACT}"
    ))  # fmt: skip


def test_a_banks_local_check_of_a_stable_month_passes_and_of_a_shifted_month_calls_for_retraining(tracking, console):
    code = _monitor(
        model="credit_registered@champion", input=tracking.stable["dune_finance"], institution="dune_finance"
    )
    text = console.getvalue()
    assert code == 0, text
    assert "dune_finance: 500 rows against 500 at development (dune_finance's development sample)" in text
    assert "act:" not in text
    console.seek(0), console.truncate()
    code = _monitor(model="credit_registered@champion", input=tracking.shifted["dune_finance"])
    text = console.getvalue()
    assert code == 6, text  # ExitCode.BREACHED
    assert "against 8,500 at development (the consortium's development sample): act" in text
    assert "act: LIMIT_BAL stability index" in text and "act: the portfolio defaulted at" in text
    assert mlflow.get_experiment_by_name(monitoring_experiment("credit_registered")) is None  # a local check: no run


@pytest.mark.parametrize(
    "change, options, message",
    [
        (lambda f: f.drop(columns=["LIMIT_BAL"]), {}, "rejected, nothing was counted: column LIMIT_BAL is present"),
        (
            lambda f: f.assign(**{SCHEMA.label.column: f[SCHEMA.label.column].replace(1, "yes")}),
            {},
            f"column {SCHEMA.label.column} has ",
        ),
        (lambda f: f, {"institution": "elm_bank"}, "was not developed with institution 'elm_bank'"),
        (lambda f: f, {"model": "credit_registered@gone"}, "credit_registered@gone: no such model version"),
    ],
    ids=["a column missing", "outcomes neither 0 nor 1", "an institution not in development", "no such alias"],
)
def test_a_local_check_refuses_bad_input_in_one_line_and_counts_nothing(
    tracking, console, tmp_path, change, options, message
):
    path = tmp_path / "month.csv"
    change(pd.read_csv(tracking.stable["alder_bank"])).to_csv(path, index=False)
    code = _monitor(**{"model": "credit_registered@champion", "input": path, **options})
    text = console.getvalue()
    assert code == 1 and message in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) <= 3, text


def test_monitor_needs_a_config_or_a_model_and_an_input(tracking, console):
    assert _monitor(input=tracking.stable["alder_bank"]) == 2
    assert _monitor() == 2
    assert _monitor(config=Path("x.yaml"), model="m@champion") == 2
    text = console.getvalue()
    assert "--input needs --model NAME@ALIAS" in text and "give --config PATH (the consortium)" in text


def _config(store, months: dict[str, Path]):
    config = store.registered.config.plain()
    for institution in config["institutions"]:
        institution["monitoring_path"] = str(months[institution["name"]])
    return parse_config(config, Path("."))


@pytest.fixture(scope="module")
def consortium_month(store, prefect_api):
    """The monitoring flow over the four banks' shifted month, in this process: its outcome."""
    from flows.monitor import monitor_champion

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store.uri)
        return monitor_champion(_config(store, store.shifted), period="2026-11")


def test_the_consortiums_monitoring_reports_each_bank_logs_a_run_beside_the_version_and_sums_as_pooled(
    tracking, consortium_month, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    outcome = consortium_month
    reports = {r.scope: r for r in outcome.reports}
    assert list(reports) == ["alder_bank", "birch_credit_union", "cedar_savings", "dune_finance", "consortium"]
    assert reports["dune_finance"].status == "act" and outcome.status == "act"
    assert {reports[n].status for n in ("alder_bank", "birch_credit_union", "cedar_savings")} <= {"stable", "warn"}
    assert outcome.breaches[0].startswith("dune_finance: LIMIT_BAL stability index")

    # The consortium's counts are the pooled rows' counts: the four months as one file, counted at once.
    pooled = tmp_path / "pooled.csv"
    pd.concat([pd.read_csv(p) for p in tracking.shifted.values()]).to_csv(pooled, index=False)
    monitored = monitored_version(tracking.uri, "credit_registered", "champion", None, tmp_path)
    whole = monitor_extract(pooled, SCHEMA, exported.load(monitored.model_path)).counts
    summed = add_counts(
        [monitor_extract(p, SCHEMA, exported.load(monitored.model_path)).counts for p in tracking.shifted.values()]
    )
    assert summed.rows == whole.rows and summed.defaults == whole.defaults and summed.features == whole.features
    np.testing.assert_allclose(summed.predicted, whole.predicted, rtol=1e-9)
    assert reports["consortium"].rows == whole.total

    client = mlflow.MlflowClient(tracking.uri)
    run = client.get_run(outcome.run_id)
    assert run.info.run_name == "v1 2026-11 act" and run.data.tags["model.version"] == "1"
    assert run.data.metrics["dune_finance/feature_stability/LIMIT_BAL"] >= 0.25
    assert run.data.metrics["consortium/rows"] == whole.total
    assert "dune_finance (500 rows): act" in run.data.tags["mlflow.note.content"]
    version = client.get_model_version("credit_registered", "1")
    assert version.tags[STATUS_TAG] == "act" and version.tags["monitoring.run_id"] == outcome.run_id
    with get_client(sync_client=True) as prefect:
        [artifact] = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["monitor-credit-registered"]))
        )
    assert artifact.data.startswith("# Monitoring of credit_registered version 1, 2026-11\n\nStatus: **act**")
    assert "| dune_finance | 500 | act |" in artifact.data and "- act: LIMIT_BAL stability index" in artifact.data
    plots = {a.path for a in client.list_artifacts(outcome.run_id, "plots")}
    assert plots == {"plots/stability.png", "plots/back_test.png"}

    # Where a reviewer looks: the version's card and `fedrisk models list` say how it has held up since.
    card = Path(client.download_artifacts(version.run_id, "model_card.html", str(tmp_path))).read_text()
    assert "<section id=monitoring><h2>Monitoring</h2><p>Latest, 2026-11: <b class=fail>act</b>" in card
    assert f"runs/{outcome.run_id}/artifactPath/monitoring/report.html" in card
    assert "<li>dune_finance: LIMIT_BAL stability index" in card
    second = Path(
        client.download_artifacts(
            client.get_model_version("credit_registered", "2").run_id, "model_card.html", str(tmp_path / "2")
        )
    ).read_text()
    assert "Not monitored yet (fedrisk monitor)." in second
    listed = {v.version: v.monitoring for v in list_versions(tracking.uri, "credit_registered")}
    assert listed == {"2": "-", "1": "act 2026-11"}


@requires_offline_browser()
def test_the_monitoring_report_opens_offline_with_its_findings_and_plots(tracking, consortium_month, tmp_path):
    page = Path(
        mlflow.artifacts.download_artifacts(f"runs:/{consortium_month.run_id}/{PAGE_ARTIFACT}", dst_path=str(tmp_path))
    )
    browser = Browser(tmp_path / "profile")  # no network at all: everything the page shows is in it
    try:
        session = browser.tab()
        text = browser.text_once_shown(
            session,
            page.as_uri(),
            ["Monitoring of credit_registered version 1, 2026-11", "Thresholds"],
            "monitoring-report",
        )
        images = browser.send(
            "Runtime.evaluate",
            session,
            expression="[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])",
            returnByValue=True,
        )["result"]["value"]
    finally:
        browser.close()
    assert "Status: act" in text and "dune_finance: act" in text and "act: LIMIT_BAL stability index" in text
    assert "consortium:" in text and "grade AUC (development)" in text
    assert images == [["stability", True], ["back_test", True]]


def test_an_institution_that_cannot_be_monitored_is_named_and_the_others_are_read_against_their_own(
    tracking, prefect_api, tmp_path
):
    from flows.monitor import monitor_champion

    unreadable = tmp_path / "alder.csv"  # every row fails a per-row check: none is counted
    pd.read_csv(tracking.stable["alder_bank"]).assign(AGE=300).to_csv(unreadable, index=False)
    months = {**tracking.stable, "cedar_savings": tmp_path / "absent.csv", "alder_bank": unreadable}
    outcome = monitor_champion(_config(tracking, months), period="2026-10")
    assert outcome.unmonitored == {
        "alder_bank": "none of its 5,000 rows passed the suite's per-row checks",
        "cedar_savings": f"{tmp_path / 'absent.csv'}: file not found",
    }
    assert [r.scope for r in outcome.reports] == ["birch_credit_union", "dune_finance", "consortium"]
    reference = tracking.registered.data  # the consortium's figure: these two against their own development
    consortium = outcome.reports[-1]
    assert consortium.development_rows == sum(
        len(pd.read_csv(reference[n])) for n in ("birch_credit_union", "dune_finance")
    )
    assert consortium.status != "act", consortium.breaches
    run = mlflow.MlflowClient(tracking.uri).get_run(outcome.run_id)
    assert run.data.tags["unmonitored.cedar_savings"].endswith("absent.csv: file not found")
