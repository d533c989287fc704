"""Validation stage: one institution's extract against a committed Great Expectations suite.

Runs where the institution's rows are; returns only a report (counts, digest, reasons).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

from tasks.data import InstitutionDataError, frame_digest, read_institution
from tasks.schema import FEATURE_COLUMNS

EXPECTATIONS_DIR = Path(__file__).resolve().parents[1] / "expectations"
DATA_SOURCE = "institutions"
DATA_ASSET = "extract"
BATCH_DEFINITION = "whole_extract"
_EXAMPLES = 3
_gx_lock = threading.Lock()
# Drift against an institution's last accepted extract. A feature's mean may move by up to one
# reference standard deviation (a units change moves it by orders of magnitude); the row count
# may grow or shrink by less than a factor of ten (a broken extract or a double load does not).
DRIFT_MEAN_TOLERANCE_STD = 1.0
DRIFT_ROW_FACTOR = 10


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of one institution's data-quality checks (no rows, only counts and reasons)."""

    institution: str
    path: str
    suite: str
    passed: bool
    rows: int = 0
    digest: str | None = None
    checks_evaluated: int = 0
    checks_failed: int = 0
    reasons: list[str] = field(default_factory=list)  # failed `error` checks: why it is quarantined
    warnings: list[str] = field(default_factory=list)  # failed `warning` checks: reported, admitted
    profile: dict | None = None  # aggregates of this extract, the reference for the next run's drift checks
    data_docs: str | None = None  # this validation's GX Data Docs page (at the institution)


class QuorumNotMet(RuntimeError):
    """Too few institutions passed validation to train a consortium model."""


@functools.lru_cache(maxsize=4)
def _context(expectations_dir: Path):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx  # heavy import, paid only when validating

    return gx.get_context(mode="file", project_root_dir=expectations_dir)


def _reason(result) -> str:
    config = result.expectation_config
    what = config.description or config.type
    exception = result.exception_info or {}
    if exception.get("raised_exception"):
        message = str(exception.get("exception_message", "")).strip().splitlines()
        return f"{what}: check could not run ({message[0] if message else 'error'})"
    outcome = result.result or {}
    mismatched = (outcome.get("details") or {}).get("mismatched") or {}
    if mismatched.get("unexpected"):
        return f"{what}: unexpected {', '.join(map(str, mismatched['unexpected']))}"
    if "unexpected_count" in outcome:
        examples = list(dict.fromkeys(map(str, outcome.get("partial_unexpected_list") or [])))[:_EXAMPLES]
        shown = f"; e.g. {', '.join(examples)}" if examples else ""
        return f"{what}: failed for {outcome['unexpected_count']} of {outcome.get('element_count', '?')} rows{shown}"
    if "observed_value" in outcome:
        observed = outcome["observed_value"]
        if isinstance(observed, float):
            observed = f"{observed:.4g}"
        return f"{what}: observed {observed}"
    return f"{what}: failed"


def profile_frame(frame) -> dict:
    """Rows and per-feature mean, std and quantiles: aggregates that describe an extract."""
    features = [c for c in FEATURE_COLUMNS if c in frame.columns and frame[c].dtype.kind in "iuf"]
    described = frame[features].astype(float).describe(percentiles=[0.05, 0.5, 0.95])
    return {
        "rows": int(len(frame)),
        "features": {
            column: {stat: float(described.at[name, column]) for stat, name in
                     [("mean", "mean"), ("std", "std"), ("p05", "5%"), ("p50", "50%"), ("p95", "95%")]}
            for column in features
        },
    }


def drift_expectations(reference: dict, columns) -> list:
    """GX checks of an extract against the profile of the institution's last accepted extract."""
    import great_expectations.expectations as gxe

    rows = reference["rows"]
    checks = [gxe.ExpectTableRowCountToBeBetween(
        min_value=rows // DRIFT_ROW_FACTOR + 1,
        max_value=rows * DRIFT_ROW_FACTOR - 1,
        description=f"row count within {DRIFT_ROW_FACTOR}x of the last accepted extract ({rows} rows)",
    )]
    for column, stats in reference["features"].items():
        if column not in columns or math.isnan(stats["mean"]):
            continue
        tolerance = DRIFT_MEAN_TOLERANCE_STD * max(stats["std"], 1e-6 * max(1.0, abs(stats["mean"])))
        checks.append(gxe.ExpectColumnMeanToBeBetween(
            column=column,
            min_value=stats["mean"] - tolerance,
            max_value=stats["mean"] + tolerance,
            description=f"{column} mean within {DRIFT_MEAN_TOLERANCE_STD:g} std of the last accepted "
                        f"extract ({stats['mean']:.4g} +- {tolerance:.4g})",
        ))
    return checks


def _data_docs_page(context, suite: str, run_id) -> Path:
    """Build the Data Docs page of one stored validation result; return its HTML file."""
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier, ValidationResultIdentifier,
    )

    identifier = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite),
        run_id=run_id,
        batch_identifier=f"{DATA_SOURCE}-{DATA_ASSET}",
    )
    site = Path(context.build_data_docs(resource_identifiers=[identifier])["local_site"].removeprefix("file://"))
    return site.parent / "validations" / Path(*identifier.to_tuple()).with_suffix(".html")


def check_frame(
    frame, suite: str, expectations_dir: Path = EXPECTATIONS_DIR, reference: dict | None = None,
    run_name: str = "adhoc",
    ignore_columns: tuple[str, ...] = (),
    ignore_types: tuple[str, ...] = (),
) -> tuple[int, list[str], list[str], Path]:
    """Run `suite` (and, given a reference profile, the drift checks) on a DataFrame.

    Returns (checks evaluated, failed `error` checks, failed `warning` checks, Data Docs page).
    The suite's result is stored under `run_name` in the GX context and rendered as Data Docs.
    Checks on `ignore_columns` or of `ignore_types` are left out of the outcome (scoring input
    has no label, and the suite's table-level checks describe a training extract).
    """
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    with _gx_lock:  # the GX context is not thread-safe
        context = _context(Path(expectations_dir))
        definition = context.validation_definitions.get(suite)
        outcome = definition.run(batch_parameters={"dataframe": frame}, run_id=RunIdentifier(run_name=run_name))
        page = _data_docs_page(context, suite, outcome.meta["run_id"])
        results = [r for r in outcome.results
                   if r.expectation_config.kwargs.get("column") not in ignore_columns
                   and r.expectation_config.type not in ignore_types]
        if reference is not None:
            drift = gx.ExpectationSuite(name=f"{suite}-drift", expectations=drift_expectations(reference, frame.columns))
            batch = definition.batch_definition.get_batch(batch_parameters={"dataframe": frame})
            results += batch.validate(drift).results
    failed = [r for r in results if not r.success]
    missing = {
        r.expectation_config.kwargs.get("column")
        for r in failed
        if r.expectation_config.type == "expect_column_to_exist"
    }
    # A missing column fails every check on it; its absence is the one reason worth reading.
    shown = [
        r for r in failed
        if (r.expectation_config.type == "expect_column_to_exist"
            or r.expectation_config.kwargs.get("column") not in missing)
        and not (r.expectation_config.type == "expect_table_columns_to_match_set"
                 and not ((r.result or {}).get("details") or {}).get("mismatched", {}).get("unexpected"))
    ]
    errors = [_reason(r) for r in shown if str(r.expectation_config.severity.value) != "warning"]
    warnings = [_reason(r) for r in shown if str(r.expectation_config.severity.value) == "warning"]
    return len(results), errors, warnings, page


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as error:  # unreadable now: key on the reason, so a fixed file is re-checked
        return f"unreadable:{type(error).__name__}"


def validation_cache_key(context, parameters: dict) -> str:
    """Same file bytes, column mapping, suite JSON, reference profile and GX context: same report.

    The context's location is part of the key because the report links to a Data Docs page in it.
    """
    suite_file = Path(parameters["expectations_dir"]) / "gx" / "expectations" / f"{parameters['suite']}.json"
    parts = [
        parameters["institution"],
        _file_digest(parameters["path"]),
        _file_digest(suite_file),
        json.dumps(parameters["columns"] or {}, sort_keys=True),
        json.dumps(parameters["reference"], sort_keys=True),
        str(Path(parameters["expectations_dir"]).resolve()),
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


@task(
    name="validate-institution",
    task_run_name="validate-{institution}",
    # Unchanged data is not revalidated; a change to this module's code also invalidates.
    cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=validation_cache_key),
    persist_result=True,
)
def validate_institution(
    institution: str,
    path: Path,
    columns: dict[str, str] | None,
    suite: str,
    reference: dict | None = None,
    expectations_dir: Path = EXPECTATIONS_DIR,
) -> ValidationReport:
    """Read and check one institution's extract (against `reference`, the profile of its last
    accepted extract, when there is one); an unreadable file is a failed report, not a crash."""
    try:
        frame = read_institution(institution, path, columns)
    except InstitutionDataError as error:
        return ValidationReport(institution, str(path), suite, passed=False, checks_evaluated=1,
                                checks_failed=1, reasons=[str(error)])
    evaluated, errors, warnings, page = check_frame(frame, suite, expectations_dir, reference, run_name=institution)
    return ValidationReport(
        institution=institution,
        path=str(path),
        suite=suite,
        passed=not errors,
        rows=len(frame),
        digest=frame_digest(frame),
        checks_evaluated=evaluated,
        checks_failed=len(errors) + len(warnings),
        reasons=errors,
        warnings=warnings,
        profile=profile_frame(frame),
        data_docs=str(page),
    )


def admitted_institutions(reports: list[ValidationReport], quorum: int, min_row_share: float = 0.0) -> list[str]:
    """The institutions that passed, or QuorumNotMet naming every excluded one and why.

    The policy needs at least `quorum` institutions, holding at least `min_row_share` of all
    rows the institutions reported (an unreadable file reports none).
    """
    admitted = [r for r in reports if r.passed]
    total_rows = sum(r.rows for r in reports)
    share = sum(r.rows for r in admitted) / total_rows if total_rows else 0.0
    shortfalls = []
    if len(admitted) < quorum:
        shortfalls.append(f"only {len(admitted)} of {len(reports)} institutions passed validation, quorum is {quorum}")
    if share < min_row_share:
        shortfalls.append(f"institutions that passed hold {share:.1%} of {total_rows} rows, "
                          f"policy requires {min_row_share:.1%}")
    if shortfalls:
        excluded = "; ".join(f"{r.institution}: {' | '.join(r.reasons)}" for r in reports if not r.passed)
        raise QuorumNotMet(f"{'; '.join(shortfalls)}; nothing was trained or registered. Excluded: {excluded}")
    return [r.institution for r in admitted]
