"""The registry stage's Prefect tasks: find the champion and the reference profiles, register the new version
(tracking.registry does the work; these add the retries of a call to a tracking server)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.retries import TRANSIENT_RETRIES
from tracking import monitoring, registry

find_champion = task(name="find-champion", task_run_name="find-champion", **TRANSIENT_RETRIES)(registry.find_champion)
find_reference_profiles = task(
    name="find-reference-profiles", task_run_name="find-reference-profiles", **TRANSIENT_RETRIES
)(registry.find_reference_profiles)
register_model = task(
    name="register-model", task_run_name="register-model", **TRANSIENT_RETRIES, cache_policy=NO_CACHE
)(registry.register_model)
monitored_version = task(name="monitored-version", task_run_name="monitored-version", **TRANSIENT_RETRIES)(
    monitoring.monitored_version
)
log_monitoring = task(
    name="log-monitoring", task_run_name="log-monitoring", **TRANSIENT_RETRIES, cache_policy=NO_CACHE
)(monitoring.log_monitoring)
