"""The validation sub-flow: every institution's extract against the schema's GX suite."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.config import RunConfig
from flows.settings import Settings
from tasks.registry import find_reference_profiles
from tasks.reporting import publish_validation_table
from tasks.validation import ValidationReport, validate_institution


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
        validate_institution.submit(i.name, i.path, i.columns, suite=config.suite,
                                    reference=references.get(i.name), expectations_dir=settings.expectations_dir)
        for i in config.institutions
    ]
    reports = [future.result() for future in futures]
    publish_validation_table(config.model_name, reports)
    return reports
