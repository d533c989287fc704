"""The validation sub-flow: every institution's extract against the schema's GX suite."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.settings import Settings
from tasks.config import RunConfig
from tasks.data import Extract
from tasks.registry import find_reference_profiles
from tasks.reporting import publish_validation_table
from tasks.validation import ValidationReport, validate_institution


def extracts(config: RunConfig) -> list[Extract]:
    """Each configured institution's extract, before validation."""
    return [Extract(i.name, i.path, dict(i.columns)) for i in config.institutions]


@flow(name="validate", flow_run_name="validate-{config.model_name}",
      task_runner=ThreadPoolTaskRunner(max_workers=4))
def validate_consortium(config: RunConfig) -> list[ValidationReport]:
    """One validation task per institution; failures are reports, so every institution is checked.

    Each institution is also checked for drift against the profile of its last accepted
    extract (kept with the model's last registered retraining), unless the config turns that off.
    """
    settings = Settings()
    references = find_reference_profiles(settings.mlflow_tracking_uri, config.model_name) if config.drift_checks else {}
    futures = [
        validate_institution.submit(extract, config.data_schema, reference=references.get(extract.institution),
                                    expectations_dir=settings.expectations_dir)
        for extract in extracts(config)
    ]
    reports = [future.result() for future in futures]
    publish_validation_table(config.model_name, reports)
    return reports
