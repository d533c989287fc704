"""The monitoring flow: the champion's report at every institution and for the consortium, on this period's extracts
of the scoring population, logged as an MLflow run beside the version and as a Prefect artifact. A breach emits a
Prefect event (BREACH_EVENT), which the retraining deployment's automation answers."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict

from consortium.local import LocalConsortium
from consortium.protocol import Consortium
from contract.data import Extract
from errors import FedriskError, first_line
from flows.config import load_config
from flows.settings import PROJECT_ROOT, Settings
from institution.monitoring import MonitoredExtract, add_counts
from monitoring.report import MonitoringReport, monitoring_report, node_summary, report_markdown, worst
from runconfig import RunConfig
from tasks.per_institution import monitor_institution, monitor_securely
from tasks.registry import log_monitoring, monitored_version
from tasks.reporting import publish_monitoring
from tracking.monitoring import PAGE_ARTIFACT
from tracking.versions import CHAMPION, run_page_url

BREACH_EVENT = "fedrisk.monitoring.breach"
CONSORTIUM = "consortium"


class MonitoringBreach(BaseModel):
    """A breach event's payload: what the retraining it starts is told (and its lineage records)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    version: str
    period: str
    reason: str
    mlflow_run_id: str
    config_file: str


@dataclass(frozen=True)
class MonitoringOutcome:
    """One period's monitoring: the version, the reports (each institution's, then the consortium's), what could
    not be monitored and why, and where the run is."""

    label: str
    version: str
    period: str
    reports: list[MonitoringReport]
    run_id: str
    unmonitored: dict[str, str] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return worst([r.status for r in self.reports])

    @property
    def breaches(self) -> list[str]:
        return [f"{r.scope}: {text}" for r in self.reports for text in r.breaches]


def monitoring_consortium(config: RunConfig) -> Consortium:
    """Where each institution's extract of this period is: its node (which reads its own monitoring extract) or,
    in simulation, its monitoring_path."""
    if config.cross_silo:
        from flows.validate import consortium_of

        return consortium_of(config)
    missing = [i.name for i in config.institutions if i.monitoring_path is None]
    if missing:
        raise LookupError(
            f"institutions {missing} have no monitoring_path in the run config: the extract of this period's "
            f"scoring population to monitor the champion on"
        )
    return LocalConsortium(tuple(Extract(i.name, i.monitoring_path, dict(i.columns)) for i in config.institutions))


def _reports(monitored, extracts: dict[str, MonitoredExtract], config: RunConfig) -> list[MonitoringReport]:
    """Each institution's counts against its own development sample (the consortium's where it had none), then
    the sum of those monitored against the sum of their development samples (all of them, when one had none)."""
    reference = monitored.reference
    reports = [
        monitoring_report(
            name,
            reference.institutions.get(name, reference.consortium),
            extract.counts,
            config.monitoring,
        )
        for name, extract in extracts.items()
    ]
    developed = [reference.institutions[n] for n in extracts if n in reference.institutions]
    development = add_counts(developed) if len(developed) == len(extracts) else reference.consortium
    summed = add_counts([e.counts for e in extracts.values()])
    return [*reports, monitoring_report(CONSORTIUM, development, summed, config.monitoring)]


def _plain_reports(consortium, monitored, period: str, config: RunConfig):
    """Each institution counts its extract (in simulation here, across silos at its node) and sends its counts:
    every institution's report and the consortium's, and each institution that could not be monitored, with why."""
    logger = get_run_logger()
    futures = {
        name: monitor_institution.submit(
            consortium, name, monitored.schema, monitored.model_path, period, config.monitoring
        )
        for name in consortium.names
    }
    extracts, unmonitored = {}, {}
    for name, future in futures.items():
        try:
            extract = future.result()
        except FedriskError as error:  # a bad or missing extract, a refusing node: the others are still monitored
            unmonitored[name] = first_line(error)
        else:
            if extract.counts.total:
                extracts[name] = extract
            else:
                unmonitored[name] = f"none of its {extract.rows:,} rows passed the suite's per-row checks"
        if name in unmonitored:
            logger.warning("%s not monitored: %s", name, unmonitored[name])
    if not extracts:
        raise LookupError(
            f"no institution could be monitored: {'; '.join(f'{n}: {r}' for n, r in unmonitored.items())}"
        )
    for name, extract in extracts.items():
        logger.info(
            "%s: %s rows counted%s",
            name,
            f"{extract.counts.total:,}",
            f" ({extract.not_counted:,} failed a per-row check)" if extract.not_counted else "",
        )
    return _reports(monitored, extracts, config), unmonitored


def _secure_reports(consortium, monitored, period: str, config: RunConfig):
    """Under secure aggregation: the consortium's report from one secure sum of the nodes' counts, against the
    secure sum of their development counts; of each institution only its status and findings by name (its own
    report, with the figures, stays at its node)."""
    logger = get_run_logger()
    secured = monitor_securely(consortium, monitored.schema, monitored.model_path, period, config.monitoring)
    for name, why in secured.unmonitored.items():
        logger.warning("%s not monitored: %s", name, why)
    if secured.counts is None or secured.counts.total == 0:
        raise LookupError(
            "no secure sum of this period's counts: " + "; ".join(f"{n}: {r}" for n, r in secured.unmonitored.items())
        )
    nodes = [
        node_summary(name, int(meta["rows"]) - int(meta["not_counted"]), meta["status"], meta["findings"])
        for name, meta in secured.institutions.items()
    ]
    development = monitored.reference.consortium
    if monitored.reference.summed_over and set(monitored.reference.summed_over) != set(secured.institutions):
        logger.warning(
            "the development reference sums %s, this period's counts %s",
            ", ".join(monitored.reference.summed_over),
            ", ".join(secured.institutions),
        )
    summed = monitoring_report(CONSORTIUM, development, secured.counts, config.monitoring)
    return [*nodes, summed], dict(secured.unmonitored)


@flow(name="monitor", flow_run_name="monitor-{config.model_name}", task_runner=ThreadPoolTaskRunner(max_workers=4))
def monitor_champion(config: RunConfig, period: str | None = None) -> MonitoringOutcome:
    """Monitor `config.model_name`'s champion on every institution's extract of `period` (this month by default)."""
    settings = Settings()
    logger = get_run_logger()
    period = period or date.today().strftime("%Y-%m")
    with tempfile.TemporaryDirectory(prefix="fedrisk-monitor-") as scratch:
        monitored = monitored_version(settings.mlflow_tracking_uri, config.model_name, CHAMPION, None, Path(scratch))
        logger.info(
            "monitoring %s for %s at %s", monitored.label, period, ", ".join(i.name for i in config.institutions)
        )
        consortium = monitoring_consortium(config)
        if consortium.cross_silo and consortium.secure:
            reports, unmonitored = _secure_reports(consortium, monitored, period, config)
        else:
            reports, unmonitored = _plain_reports(consortium, monitored, period, config)
    tags = {"prefect.flow_run_id": str(_flow_run_id()), **{f"unmonitored.{n}": r for n, r in unmonitored.items()}}
    experiment_id, run_id = log_monitoring(
        settings.mlflow_tracking_uri, monitored, period, reports, tags, config.monitoring, settings.mlflow_ui_url
    )
    links = [
        f"MLflow run: {run_page_url(settings.mlflow_ui_url, experiment_id, run_id)}",
        f"Report: {run_page_url(settings.mlflow_ui_url, experiment_id, run_id, PAGE_ARTIFACT)}",
    ]
    outcome = MonitoringOutcome(monitored.label, monitored.version, period, reports, run_id, unmonitored, links)
    title = f"Monitoring of {monitored.label}, {period}"
    publish_monitoring(config.model_name, report_markdown(title, reports, links))
    logger.info("%s: %s", title, outcome.status)
    if outcome.status == "act":
        _emit_breach(config, outcome)
    return outcome


@flow(name="monitor-from-config", flow_run_name="monitor-{config_file}")
def monitor_from_config(config_file: str, period: str | None = None) -> dict:
    """The monitor deployments' entry point: monitor the champion of what a committed config file describes
    (relative to the project root unless absolute). A breach is the report's finding, not a failure of the run."""
    settings = Settings()
    path = Path(config_file) if Path(config_file).is_absolute() else PROJECT_ROOT / config_file
    outcome = monitor_champion(load_config(path, expectations_dir=settings.expectations_dir), period)
    return {
        "model": outcome.label,
        "period": outcome.period,
        "status": outcome.status,
        "breaches": outcome.breaches,
        "unmonitored": outcome.unmonitored,
        "mlflow_run_id": outcome.run_id,
    }


def _flow_run_id():
    from prefect.runtime import flow_run

    return flow_run.id


def _emit_breach(config: RunConfig, outcome: MonitoringOutcome) -> None:
    """The Prefect event a breach emits: the model as its resource; in its payload (MonitoringBreach) the reason
    (every breach) and the config file, which the automation's retraining reads."""
    from prefect.events import emit_event

    name = config.model_name
    breach = MonitoringBreach(
        model=name,
        version=outcome.version,
        period=outcome.period,
        reason="; ".join(outcome.breaches),
        mlflow_run_id=outcome.run_id,
        config_file=str(config.source_file or ""),
    )
    emit_event(
        event=BREACH_EVENT,
        resource={"prefect.resource.id": f"fedrisk.model.{name}", "prefect.resource.name": name},
        payload=breach.model_dump(),
    )
    get_run_logger().warning("breach: %s", "; ".join(outcome.breaches))
