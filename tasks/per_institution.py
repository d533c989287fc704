"""The pipeline's per-institution Prefect tasks: validate, compute statistics and evaluate where each
institution's rows are (consortium.local decides where that is). Only flows import this module, and with it Prefect; an
institution's node imports the functions these tasks call and never Prefect (a node starts in a second,
not after Prefect's import)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE, TASK_SOURCE, CacheKeyFnPolicy

from contract import data, suites
from contract.data import Split
from contract.schema import Schema
from institution import validation, validation_page
from institution.evaluation import InstitutionEvaluation
from institution.monitoring import MonitoredExtract, MonitoringCounts
from institution.statistics import LocalStatistics
from institution.validation import EXPECTATIONS_DIR, ValidationReport
from runconfig import EvaluationConfig, MonitoringConfig

# The code that makes a validation report: a change to it makes every cached report stale.
_VALIDATION_CODE = (validation, data, suites, validation_page)


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as error:  # unreadable now: key on the reason, so a fixed file is re-checked
        return f"unreadable:{type(error).__name__}"


def validation_cache_key(context, parameters: dict) -> str | None:
    """Same file (path and bytes), column mapping, schema version and suite JSON, reference profile, GX context
    and validation code: same report. The path is part of it because the report names the file it read; the
    context's location because the report links to a Data Docs page in it. Simulation only (the flow turns
    caching off across silos, where only the node reads the file)."""
    consortium, schema = parameters["consortium"], parameters["schema"]
    extract = consortium.extract(parameters["institution"])
    suite_file = Path(parameters["expectations_dir"]) / "gx" / "expectations" / f"{schema.suite}.json"
    parts = [
        extract.institution,
        str(Path(extract.path).resolve()),
        _file_digest(extract.path),
        schema.model_dump_json(),
        _file_digest(suite_file),
        json.dumps(extract.columns, sort_keys=True),
        json.dumps(parameters["reference"], sort_keys=True),
        str(Path(parameters["expectations_dir"]).resolve()),
        *(_file_digest(Path(module.__file__)) for module in _VALIDATION_CODE),
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


@task(
    name="validate-institution",
    task_run_name="validate-{institution}",
    # Unchanged data is not revalidated; a change to the task or to the validation code also invalidates.
    cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=validation_cache_key),
    persist_result=True,
)
def validate_institution(
    consortium,
    institution: str,
    schema: Schema,
    reference: dict | None = None,
    expectations_dir: Path = EXPECTATIONS_DIR,
) -> ValidationReport:
    """One institution's validation, where its extract is (consortium.local): its report, or a failed one
    naming why it could not be validated (unreadable file, unreachable node)."""
    return consortium.validate(institution, schema, reference, expectations_dir)


@task(name="evaluate-institution", task_run_name="evaluate-{institution}")
def evaluate_institution(
    consortium, institution: str, schema: Schema, split: Split, models: dict[str, str], evaluation: EvaluationConfig
) -> InstitutionEvaluation:
    """One institution's holdout evaluation of `models`, where its rows are (consortium.local)."""
    return consortium.evaluate(institution, schema, split, models, evaluation)


@task(name="monitor-institution", task_run_name="monitor-{institution}", cache_policy=NO_CACHE)
def monitor_institution(
    consortium, institution: str, schema: Schema, model: Path, period: str, thresholds: MonitoringConfig
) -> MonitoredExtract:
    """The champion's monitoring counts on one institution's extract of its scoring population, where its rows
    are (consortium.local, or its node); counts only leave."""
    return consortium.monitor(institution, schema, model, period, thresholds)


@task(name="secure-monitoring", task_run_name="secure-monitoring-{period}", cache_policy=NO_CACHE)
def monitor_securely(consortium, schema: Schema, model: Path, period: str, thresholds: MonitoringConfig):
    """This period's monitoring counts of every node as one secure sum (consortium.nodes.SecureMonitoring)."""
    monitored = consortium.secure_monitor(schema, model, period, thresholds)
    if monitored.completed:
        get_run_logger().info("monitoring of %s, %s", period, monitored.completed)
    return monitored


@task(name="secure-development-counts", task_run_name="secure-development-counts", cache_policy=NO_CACHE)
def sum_development_counts(consortium, model: Path) -> tuple[MonitoringCounts, list[str], str]:
    """The development reference of the run's new model as one secure sum of each node's counts of its
    development rows (which secure aggregation kept out of its evaluation): the sum and whose it is."""
    counts, summed_over, completed = consortium.secure_development(model)
    get_run_logger().info("development reference for monitoring, %s", completed)
    return counts, summed_over, completed


@task(name="secure-fairness-counts", task_run_name="secure-fairness-counts", cache_policy=NO_CACHE)
def sum_fairness_counts(consortium, schema: Schema, model: Path) -> dict:
    """The run's counts by protected group (the new model's, with its proxies, and the champion's) as one secure
    sum of each node's: role -> the consortium's counts."""
    summed, completed = consortium.secure_fairness(schema, model)
    get_run_logger().info("fair-lending counts, %s", completed)
    return summed


@task(name="local-statistics", task_run_name="statistics-{institution}")
def compute_local_statistics(
    consortium, institution: str, schema: Schema, features: list[str], split: Split
) -> LocalStatistics:
    """Federated-statistics aggregates of one institution's training split, computed where its rows are
    (consortium.local); no row leaves."""
    return consortium.statistics(institution, schema, features, split)


@task(name="secure-statistics", task_run_name="secure-statistics")
def compute_secure_statistics(
    consortium, schema: Schema, features: list[str], split: Split, kept: Path | None = None
) -> tuple[LocalStatistics, dict[str, int]]:
    """The consortium's statistics as one secure sum over the nodes: the summed statistics (institution
    'consortium') and each institution's row count; no institution's sums or counts per level in the clear.
    The sum is kept under `kept` for later runs over the same extracts (a node adds an input to one sum only)."""
    summed, counts, completed = consortium.secure_statistics(schema, features, split, kept)
    get_run_logger().info("federated statistics, %s", completed)
    return summed, counts
