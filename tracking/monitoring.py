"""Monitoring in MLflow: the version monitored (its exported model and development reference, from its run), and
each period's reports as one run in the model's monitoring experiment, tagged with the version, so that the months
form a series on MLflow's charts; the version's tags say its latest monitoring status."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from contract.schema import Schema
from institution.monitoring import REFERENCE_ARTIFACT, DevelopmentReference
from institution.scoring import model_schema
from monitoring.report import MonitoringReport, worst
from runconfig import MonitoringConfig
from tracking.registry import NOTE_TAG, artifact_location, experiment_name, exported_model_dir
from tracking.versions import resolve_version, run_page_url

STATUS_TAG = "monitoring.status"  # on the version: its latest monitoring's status (stable, warn, act)
RUN_TAG = "monitoring.run_id"  # on the version: that monitoring's MLflow run
PERIOD_TAG = "monitoring.period"
REPORT_ARTIFACT = "monitoring/report.json"
PAGE_ARTIFACT = "monitoring/report.html"


def monitoring_experiment(model_name: str) -> str:
    return f"fedrisk-{model_name}-monitoring"


@dataclass(frozen=True)
class MonitoredVersion:
    """A registered version as monitoring needs it: its schema, a local copy of its exported model, and the
    development reference its registration stored."""

    name: str
    version: str
    run_id: str
    schema: Schema
    model_path: Path
    reference: DevelopmentReference

    @property
    def label(self) -> str:
        return f"{self.name} version {self.version}"


def monitored_version(
    tracking_uri: str, name: str, alias: str | None, version: str | None, download_dir: Path
) -> MonitoredVersion:
    """The version NAME@ALIAS (or NAME/VERSION) downloaded for monitoring; LookupError, in words, when it does not
    resolve or holds no development reference (registered before monitoring existed)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    found = resolve_version(tracking_uri, name, alias, version)
    label = f"{name} version {found.version}"
    schema = model_schema(found.tags, label)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        document = mlflow.artifacts.load_dict(f"runs:/{found.run_id}/{REFERENCE_ARTIFACT}")
    except MlflowException:
        why = (
            "its institutions trained under secure aggregation and the secure sum of their development counts did "
            "not complete (the retraining's log says why)"
            if found.tags.get("secure_aggregation") == "true"
            else "it was registered before fedrisk monitored models; retrain it to monitor it"
        )
        raise LookupError(f"{label} has no development reference ({REFERENCE_ARTIFACT} in its run): {why}") from None
    target = Path(download_dir) / f"{name}-v{found.version}"
    downloaded = mlflow.artifacts.download_artifacts(f"models:/{name}/{found.version}", dst_path=str(target))
    return MonitoredVersion(
        name,
        str(found.version),
        found.run_id,
        schema,
        exported_model_dir(Path(downloaded)),
        DevelopmentReference.from_json(document),
    )


def run_description(monitored: MonitoredVersion, period: str, reports: list[MonitoringReport]) -> str:
    """What the monitoring run's page says first: the status and every breach and shift, per scope."""
    lines = [f"Monitoring of **{monitored.label}** for {period}: **{worst([r.status for r in reports])}**.", ""]
    for report in reports:
        lines.append(f"- {report.scope} ({report.rows:,} rows): {report.status}")
        lines += [f"  - act: {text}" for text in report.breaches]
        lines += [f"  - warn: {text}" for text in report.shifts]
    return "\n".join(lines)


def log_monitoring(
    tracking_uri: str,
    monitored: MonitoredVersion,
    period: str,
    reports: list[MonitoringReport],
    tags: dict[str, str],
    thresholds: MonitoringConfig,
    mlflow_ui_url: str,
) -> tuple[str, str]:
    """One MLflow run for this period's reports (figures as metrics, the report as JSON and as an HTML page with
    its plots), and the version's monitoring tags; returns the experiment's and the run's ids."""
    import mlflow

    from tracking.monitoring_page import monitoring_page_html
    from tracking.plots import backtest_figure, png, stability_figure

    figured = [r for r in reports if not r.at_node]  # an institution's figures under secure aggregation: at its node
    plots = {
        "stability": png(stability_figure(figured, thresholds.stability_warn, thresholds.stability_act)),
        "back_test": png(backtest_figure(figured)),
    }
    page = monitoring_page_html(monitored.label, period, reports, thresholds, plots)

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(monitoring_experiment(monitored.name))
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else mlflow.create_experiment(
            monitoring_experiment(monitored.name), artifact_location=artifact_location(tracking_uri)
        )
    )
    status = worst([r.status for r in reports])
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name=f"v{monitored.version} {period} {status}",
        tags={
            **tags,
            "model.name": monitored.name,
            "model.version": monitored.version,
            PERIOD_TAG: period,
            STATUS_TAG: status,
            NOTE_TAG: run_description(monitored, period, reports),
        },
    )
    run_id = run.info.run_id
    try:
        for report in reports:
            client.log_batch(run_id, metrics=[_metric(k, v) for k, v in report.metrics().items()])
        client.log_dict(run_id, {"period": period, "reports": [asdict(r) for r in reports]}, REPORT_ARTIFACT)
        client.log_text(run_id, page, PAGE_ARTIFACT)
        with tempfile.TemporaryDirectory() as folder:
            for name, image in plots.items():
                (Path(folder) / f"{name}.png").write_bytes(image)
            client.log_artifacts(run_id, folder, "plots")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    for key, value in {STATUS_TAG: status, RUN_TAG: run_id, PERIOD_TAG: period}.items():
        client.set_model_version_tag(monitored.name, monitored.version, key, value)
    link = run_page_url(mlflow_ui_url, experiment_id, run_id, PAGE_ARTIFACT)
    _update_card(client, monitored, status, period, reports, link)
    return experiment_id, run_id


def _update_card(client, monitored: MonitoredVersion, status: str, period: str, reports, link: str) -> None:
    """The version's model card, its monitoring section replaced by this status (the card is the version's
    page for a reviewer: it says how the model has held up since)."""
    from tracking.model_card import with_monitoring
    from tracking.versions import MODEL_CARD_ARTIFACT

    findings = [f"{r.scope}: {text}" for r in reports for text in r.breaches + r.shifts]
    with tempfile.TemporaryDirectory() as folder:
        card = Path(client.download_artifacts(monitored.run_id, MODEL_CARD_ARTIFACT, folder)).read_text()
    client.log_text(monitored.run_id, with_monitoring(card, (status, period, findings, link)), MODEL_CARD_ARTIFACT)


def _metric(key: str, value: float):
    import time

    from mlflow.entities import Metric

    return Metric(key, value, int(time.time() * 1000), 0)


def cooldown_left(tracking_uri: str, model_name: str, cooldown_hours: float) -> str | None:
    """Why a retraining that monitoring started must wait, or None: the last one finished less than
    `cooldown_hours` ago (a storm of breaches, month after month or institution after institution, retrains once)."""
    import time

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(experiment_name(model_name))
    if experiment is None or cooldown_hours <= 0:
        return None
    runs = mlflow.MlflowClient().search_runs(
        [experiment.experiment_id],
        "tags.`prefect.trigger` = 'monitoring' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    hours = (time.time() - runs[0].info.start_time / 1000) / 3600
    if hours >= cooldown_hours:
        return None
    version = runs[0].data.tags.get("mlflow.runName", runs[0].info.run_id)
    return (
        f"monitoring started a retraining of {model_name} {hours:.1f} h ago ({version}); the cool-down is "
        f"{cooldown_hours:g} h (monitoring.cooldown_hours)"
    )
