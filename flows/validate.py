"""The validation sub-flow: every institution's extract against the schema's GX suite."""

from __future__ import annotations

from prefect import flow

from flows.config import RunConfig
from tasks.reporting import publish_validation_table
from tasks.validation import ValidationReport, validate_institution


@flow(name="validate", flow_run_name="validate-{config.model_name}")
def validate_consortium(config: RunConfig) -> list[ValidationReport]:
    """One validation task per institution; failures are reports, so every institution is checked."""
    reports = [validate_institution(i.name, i.path, i.columns, suite=config.suite) for i in config.institutions]
    publish_validation_table(config.model_name, reports)
    return reports
