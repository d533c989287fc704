"""The validation sub-flow: every institution's extract against the schema's GX suite."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from consortium.local import LocalConsortium
from consortium.protocol import Consortium
from contract.data import Extract
from flows.settings import Settings
from institution.validation import ValidationReport
from runconfig import RunConfig
from tasks.per_institution import validate_institution
from tasks.registry import find_reference_profiles
from tasks.reporting import publish_validation_table


def consortium_of(config: RunConfig) -> Consortium:
    """The configured institutions: their extracts (simulation) or their nodes (cross-silo)."""
    if config.cross_silo:
        from consortium.nodes import NodeConsortium, NodeHandle, Tls

        return NodeConsortium(
            tuple(NodeHandle(i.name, i.node) for i in config.institutions),
            Tls(str(config.tls.ca), str(config.tls.cert), str(config.tls.key)),
            config.quorum,
            server_host=config.tls.host,
            trees_bind=config.tls.trees_bind,
            secure_threshold=config.secure_threshold(len(config.institutions)) if config.secure_aggregation else 0,
            clip_norm=config.secure_aggregation.clip_norm if config.secure_aggregation else 10.0,
        )
    return LocalConsortium(tuple(Extract(i.name, i.path, dict(i.columns)) for i in config.institutions))


@flow(name="validate", flow_run_name="validate-{config.model_name}", task_runner=ThreadPoolTaskRunner(max_workers=4))
def validate_consortium(config: RunConfig, consortium: Any = None) -> list[ValidationReport]:
    """One validation task per institution; failures are reports, so every institution is checked.

    Each institution is also checked for drift against the profile of its last accepted
    extract (kept with the model's last registered retraining), unless the config turns that off.
    """
    settings = Settings()
    logger = get_run_logger()
    logger.info(
        "validating %d institutions against suite %s: %s",
        len(config.institutions),
        config.suite,
        ", ".join(i.name for i in config.institutions),
    )
    references = find_reference_profiles(settings.mlflow_tracking_uri, config.model_name) if config.drift_checks else {}
    consortium = consortium or consortium_of(config)
    # A report is cached by the file it read; across silos only the node can read it, so every run asks.
    validate = (
        validate_institution.with_options(cache_policy=NO_CACHE) if consortium.cross_silo else validate_institution
    )
    futures = [
        validate.submit(
            consortium,
            name,
            config.data_schema,
            reference=references.get(name),
            expectations_dir=settings.expectations_dir,
        )
        for name in consortium.names
    ]
    for future in as_completed(futures):  # each institution's outcome as it arrives
        report = future.result()
        logger.info(
            "%s: %s rows, %d of %d checks passed%s: %s%s",
            report.institution,
            f"{report.rows:,}",
            report.checks_evaluated - report.checks_failed,
            report.checks_evaluated,
            f" ({report.drift_checks} of them against its last accepted extract)" if report.drift_checks else "",
            "admitted" if report.passed else "quarantined",
            f" ({'; '.join(report.reasons)})" if report.reasons else "",
        )
    reports = [future.result() for future in futures]
    publish_validation_table(config.model_name, reports)
    return reports
