"""Validation stage: one institution's extract against a committed Great Expectations suite.

Runs where the institution's rows are; returns only a report (counts, digest, reasons). What may leave the
institution (the report's reasons, its shared checks page) holds counts, check names and declared column and
level names only; example values and undeclared header text stay in its own checks page and log.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from contract.data import Extract, InstitutionDataError, read_extract
from contract.schema import Schema
from contract.suites import DATA_ASSET, DATA_SOURCE
from errors import FedriskError
from institution.statistics import level_text
from institution.validation_page import check_status, render_page

EXPECTATIONS_DIR = Path(__file__).resolve().parents[1] / "expectations"
_EXAMPLES = 3
_gx_lock = threading.Lock()
# What an institution reads about its own extract (example values, undeclared columns): its terminal and log only.
log = logging.getLogger("fedrisk.institution")
AT_INSTITUTION = "in the institution's checks page"
# Drift against an institution's last accepted extract. A feature's mean may move by up to one
# reference standard deviation (a units change moves it by orders of magnitude); the row count
# may grow or shrink by less than a factor of ten (a broken extract or a double load does not).
# A categorical feature's level shares may move by a KL divergence of 0.1 (a level doubling from 10 %
# to 20 % of rows is about 0.03); the number of distinct values may not collapse below a fifth of
# the reference's (scaled down for a smaller extract): a feature gone constant-ish, a default filled in.
DRIFT_MEAN_TOLERANCE_STD = 1.0
DRIFT_ROW_FACTOR = 10
DRIFT_LEVEL_DIVERGENCE = 0.1
DRIFT_DISTINCT_FLOOR = 0.2


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
    drift_checks: int = 0  # of checks_evaluated, those against its last accepted extract (not the suite's)
    reasons: list[str] = field(default_factory=list)  # failed `error` checks: why it is quarantined
    warnings: list[str] = field(default_factory=list)  # failed `warning` checks: reported, admitted
    profile: dict | None = None  # aggregates of this extract, the reference for the next run's drift checks
    data_docs: str | None = None  # this validation's page as it may be shared (institution.validation_page)
    institution_page: str | None = None  # the page with example values: read at the institution, never sent

    def shared(self, profile: bool = True) -> ValidationReport:
        """The report as it leaves the institution: without its own page's path (and its profile, if not
        `profile`)."""
        return replace(self, institution_page=None, profile=self.profile if profile else None)


REFUSED_AT_START = "quarantined at the start of the training"  # why a node that refused at Prepare is left out
LEFT_OUT = "left out from"  # why a node lost mid-training is: the version was trained without it


def refused_at_start(reports: list[ValidationReport], lost: dict[str, str]) -> list[ValidationReport]:
    """The reports with each institution that refused the training when it began (its node's policy) quarantined,
    its refusal the reason: it is left out like a failed validation, and the quorum decided."""
    refused = {name: why for name, why in lost.items() if why.startswith(REFUSED_AT_START)}
    return [
        replace(r, passed=False, reasons=[*r.reasons, refused[r.institution]]) if r.institution in refused else r
        for r in reports
    ]


class QuorumNotMet(FedriskError, RuntimeError):
    """Too few institutions passed validation to train a consortium model."""


@functools.lru_cache(maxsize=4)
def _context(expectations_dir: Path):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx  # heavy import, paid only when validating

    return gx.get_context(mode="file", project_root_dir=expectations_dir)


def _reason(result, local: bool, aggregates: bool = True) -> str:
    config = result.expectation_config
    return f"{config.description or config.type}: {_outcome(result, local, aggregates)}"


def _outcome(result, local: bool, aggregates: bool = True) -> str:
    """What one check found, in words: the offending count, an observed value, or why the check could not run.
    `local` (for the institution): with a few values of one column and the undeclared columns' names. Otherwise
    (what may leave it) counts and numbers only, and no observed aggregate unless `aggregates`."""
    exception = result.exception_info or {}
    if exception.get("raised_exception"):
        message = str(exception.get("exception_message", "")).strip().splitlines()
        return (
            f"check could not run ({message[0] if message else 'error'})"
            if local
            else f"check could not run (why: {AT_INSTITUTION})"
        )
    outcome = result.result or {}
    mismatched = (outcome.get("details") or {}).get("mismatched") or {}
    if mismatched.get("unexpected"):
        unexpected = mismatched["unexpected"]
        return (
            f"unexpected {', '.join(map(str, unexpected))}"
            if local
            else f"{len(unexpected)} unexpected column(s) (named {AT_INSTITUTION})"
        )
    if "unexpected_count" in outcome:
        if not outcome["unexpected_count"]:
            return f"all {outcome.get('element_count', '?')} rows as expected"
        # One column's offending values help find them; a multi-column check's would be whole rows: counts only.
        rows = "column_list" in result.expectation_config.kwargs
        examples = (
            []
            if rows or not local
            else list(dict.fromkeys(map(str, outcome.get("partial_unexpected_list") or [])))[:_EXAMPLES]
        )
        shown = f"; e.g. {', '.join(examples)}" if examples else ""
        return f"failed for {outcome['unexpected_count']} of {outcome.get('element_count', '?')} rows{shown}"
    if "observed_value" in outcome:
        observed = outcome["observed_value"]
        number = isinstance(observed, (int, float)) and not isinstance(observed, bool)
        if not local and not (number and aggregates):
            return ("passed" if result.success else "failed") + f" (observed value {AT_INSTITUTION})"
        if isinstance(observed, float):
            observed = f"{observed:.4g}"
        return f"observed {observed}"
    return "passed" if result.success else "failed"


def profile_frame(frame, schema: Schema) -> dict:
    """Aggregates that describe an extract, per feature present: the missing share and number of
    distinct values; numeric: mean, std and 5/50/95 % quantiles; categorical: the share of each level
    held by at least the schema's `rare_level_min_rows` rows here (the rest count as '(other)')."""
    profile: dict = {"rows": int(len(frame)), "features": {}}
    for name, feature in schema.features.items():
        if name not in frame.columns:
            continue
        values = frame[name]
        entry = {"missing": float(values.isna().mean()) if len(values) else 0.0, "distinct": int(values.nunique())}
        if feature.type == "categorical":
            present = values[values.notna()]
            counts = level_text(present, feature).value_counts() if len(present) else {}
            kept = {str(level): int(n) for level, n in dict(counts).items() if n >= schema.rare_level_min_rows}
            shares = {level: n / len(values) for level, n in kept.items()}
            other = (len(present) - sum(kept.values())) / len(values) if len(values) else 0.0
            entry["levels"] = {**shares, **({"(other)": other} if other > 0 else {})}
        elif values.dtype.kind in "iuf":
            described = values.astype(float).describe(percentiles=[0.05, 0.5, 0.95])
            entry.update(
                {
                    stat: float(described[name_])
                    for stat, name_ in [("mean", "mean"), ("std", "std"), ("p05", "5%"), ("p50", "50%"), ("p95", "95%")]
                }
            )
        profile["features"][name] = entry
    return profile


def drift_expectations(reference: dict, schema: Schema, columns, private: bool = False) -> list:
    """GX checks of an extract against the profile of the institution's last accepted extract. `private`: the
    reference is the institution's own (it sends no profile), so the checks' descriptions give no figure of it."""
    import great_expectations.expectations as gxe

    def figures(text: str) -> str:
        return "" if private else text

    rows = reference["rows"]
    checks = [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=rows // DRIFT_ROW_FACTOR + 1,
            max_value=rows * DRIFT_ROW_FACTOR - 1,
            description=f"row count within {DRIFT_ROW_FACTOR}x of the last accepted extract"
            f"{figures(f' ({rows} rows)')}",
        )
    ]
    for column, stats in reference["features"].items():
        if column not in columns:
            continue
        if "mean" in stats and not math.isnan(stats["mean"]):
            tolerance = DRIFT_MEAN_TOLERANCE_STD * max(stats["std"], 1e-6 * max(1.0, abs(stats["mean"])))
            shown = figures(f" ({stats['mean']:.4g} +- {tolerance:.4g})")
            checks.append(
                gxe.ExpectColumnMeanToBeBetween(
                    column=column,
                    min_value=stats["mean"] - tolerance,
                    max_value=stats["mean"] + tolerance,
                    description=f"{column} mean within {DRIFT_MEAN_TOLERANCE_STD:g} std of the last accepted "
                    f"extract{shown}",
                )
            )
        feature = schema.features.get(column)
        if stats.get("levels") and feature is not None and feature.type == "categorical" and feature.levels != "open":
            checks.append(
                gxe.ExpectColumnKLDivergenceToBeLessThan(
                    column=column,
                    threshold=DRIFT_LEVEL_DIVERGENCE,
                    partition_object=_level_partition(stats, feature),
                    description=f"{column} level shares within KL divergence {DRIFT_LEVEL_DIVERGENCE:g} of the last "
                    f"accepted extract's",
                )
            )
        if stats.get("distinct", 0) > 2:
            floor = max(2, math.ceil(stats["distinct"] * DRIFT_DISTINCT_FLOOR))
            checks.append(
                gxe.ExpectColumnUniqueValueCountToBeBetween(
                    column=column,
                    min_value=floor,
                    description=(
                        f"{column} has at least a fifth of the distinct values of the last accepted extract"
                        if private
                        else f"{column} has at least {floor} distinct values (the last accepted "
                        f"extract had {stats['distinct']})"
                    ),
                )
            )
    return checks


def _level_partition(stats: dict, feature) -> dict:
    """The reference's level shares over every level the schema declares (levels too rare to be profiled
    share '(other)'), floored so that a level new to this extract has a finite divergence."""
    shares = stats["levels"]
    declared = [str(level) for level in feature.levels]
    unprofiled = [level for level in declared if level not in shares]
    spread = shares.get("(other)", 0.0) / len(unprofiled) if unprofiled else 0.0
    weights = [max(shares.get(level, spread), 1e-3) for level in declared]
    return {"values": declared, "weights": [w / sum(weights) for w in weights]}


_ROW_DETAILS = (
    "partial_unexpected_list",
    "partial_unexpected_counts",
    "partial_unexpected_index_list",
    "unexpected_list",
    "unexpected_index_list",
    "unexpected_index_query",
)


def _store_result(context, suite: str, outcome) -> None:
    """Keep the validation result in the GX context's store (GX's own record of it), without the rows a
    multi-column check found (a customer's whole row; counts stay)."""
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    identifier = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite),
        run_id=outcome.meta["run_id"],
        batch_identifier=f"{DATA_SOURCE}-{DATA_ASSET}",
    )
    for result in outcome.results:
        if "column_list" in result.expectation_config.kwargs and result.result:
            for key in _ROW_DETAILS:
                result.result.pop(key, None)
    context.validation_results_store.set(identifier, outcome)


def _write_pages(
    expectations_dir: Path, suite: str, run_name: str, local: list, shared: list, hidden: list[bool]
) -> tuple[Path, Path]:
    """The validation's self-contained pages (institution.validation_page), beside the GX context's results: the
    institution's own (example values) and the one that may be shared (`hidden`: checks whose parameters are
    figures of the institution's private reference)."""
    import time

    stem = (
        Path(expectations_dir)
        / "gx"
        / "uncommitted"
        / "validation_pages"
        / suite
        / run_name
        / f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1_000_000_000:09d}"
    )
    stem.parent.mkdir(parents=True, exist_ok=True)
    own, sent = stem.with_name(stem.name + ".html"), stem.with_name(stem.name + ".shared.html")
    own.write_text(render_page(run_name, suite, local))
    sent.write_text(render_page(run_name, suite, shared, hidden))
    return own, sent


@dataclass(frozen=True)
class CheckResults:
    """One validation's outcome, as it may leave the institution (counts, check and declared names) and as the
    institution reads it (`local_*`: with example values and undeclared column names)."""

    evaluated: int
    errors: list[str]  # failed `error` checks
    warnings: list[str]  # failed `warning` checks
    page: Path
    local_errors: list[str]
    local_warnings: list[str]
    local_page: Path


def check_frame(
    frame,
    suite: str,
    expectations_dir: Path = EXPECTATIONS_DIR,
    drift: list | None = None,
    run_name: str = "adhoc",
    ignore_columns: tuple[str, ...] = (),
    ignore_types: tuple[str, ...] = (),
    lenient: set[tuple[str, str]] = frozenset(),
    private_drift: bool = False,
) -> CheckResults:
    """Run `suite` (and `drift`, checks against the last accepted extract, see drift_expectations) on a DataFrame.

    The suite's result is stored under `run_name` in the GX context and rendered as self-contained pages.
    `private_drift`: the drift reference is the institution's own; what may be shared gives none of its figures.
    Checks on `ignore_columns` or of `ignore_types` are left out of the outcome (scoring input
    has no label, and the suite's table-level checks describe a training extract). A failed check of
    a (type, column) in `lenient` is a warning (scoring maps unseen levels to '(other)').
    """
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    with _gx_lock:  # the GX context is not thread-safe
        context = _context(Path(expectations_dir))
        definition = context.validation_definitions.get(suite)
        outcome = definition.run(batch_parameters={"dataframe": frame}, run_id=RunIdentifier(run_name=run_name))
        _store_result(context, suite, outcome)
        results = [
            r
            for r in outcome.results
            if r.expectation_config.kwargs.get("column") not in ignore_columns
            and r.expectation_config.type not in ignore_types
        ]
        if drift:
            batch = definition.batch_definition.get_batch(batch_parameters={"dataframe": frame})
            results += batch.validate(gx.ExpectationSuite(name=f"{suite}-drift", expectations=drift)).results
    failed = [r for r in results if not r.success]
    missing = {
        r.expectation_config.kwargs.get("column")
        for r in failed
        if r.expectation_config.type == "expect_column_to_exist"
    }

    # A missing column fails every check on it; its absence is the one reason worth reading.
    def on_missing(kwargs) -> bool:
        return kwargs.get("column") in missing or bool(missing & set(kwargs.get("column_list") or []))

    shown = [
        r
        for r in failed
        if (r.expectation_config.type == "expect_column_to_exist" or not on_missing(r.expectation_config.kwargs))
        and not (
            r.expectation_config.type == "expect_table_columns_to_match_set"
            and not ((r.result or {}).get("details") or {}).get("mismatched", {}).get("unexpected")
        )
    ]

    def warning(r) -> bool:
        config = r.expectation_config
        return str(config.severity.value) == "warning" or (config.type, config.kwargs.get("column")) in lenient

    private = {id(r) for r in results[len(results) - len(drift or []) :]} if private_drift and drift else set()

    def reasons(local: bool, warned: bool) -> list[str]:
        return [_reason(r, local, id(r) not in private) for r in shown if warning(r) == warned]

    own, sent = _write_pages(
        expectations_dir,
        suite,
        run_name,
        [(r, check_status(r, warning(r)), _outcome(r, True)) for r in results],
        [(r, check_status(r, warning(r)), _outcome(r, False, id(r) not in private)) for r in results],
        [id(r) in private for r in results],
    )
    return CheckResults(
        len(results), reasons(False, False), reasons(False, True), sent, reasons(True, False), reasons(True, True), own
    )


def validate_extract(
    extract: Extract,
    schema: Schema,
    reference: dict | None = None,
    expectations_dir: Path = EXPECTATIONS_DIR,
    private_reference: bool = False,
) -> ValidationReport:
    """Read and check one institution's extract against its schema's suite (and against `reference`, the
    profile of its last accepted extract, when there is one); an unreadable file is a failed report.
    Runs where the extract is; what only the institution may read (example values, undeclared columns) goes
    to its log and its own page. `private_reference`: `reference` is the institution's own, none of its figures
    is in the report."""
    institution, path, suite = extract.institution, str(extract.path), schema.suite
    try:
        frame, digest = read_extract(extract, schema)
    except InstitutionDataError as error:
        if error.detail != str(error):
            log.warning("%s (at this institution only)", error.detail)
        return ValidationReport(
            institution, path, suite, passed=False, checks_evaluated=1, checks_failed=1, reasons=[str(error)]
        )
    drift = drift_expectations(reference, schema, frame.columns, private_reference) if reference is not None else None
    checked = check_frame(frame, suite, expectations_dir, drift, run_name=institution, private_drift=private_reference)
    for reason in [*checked.local_errors, *checked.local_warnings]:
        if reason not in checked.errors and reason not in checked.warnings:
            log.warning("institution '%s': %s (at this institution only)", institution, reason)
    log.info("institution '%s': its checks page with example values: %s", institution, checked.local_page)
    evaluated, errors, warnings, page = checked.evaluated, checked.errors, checked.warnings, checked.page
    return ValidationReport(
        institution=institution,
        path=path,
        suite=suite,
        passed=not errors,
        rows=len(frame),
        digest=digest,
        checks_evaluated=evaluated,
        checks_failed=len(errors) + len(warnings),
        drift_checks=len(drift or []),
        reasons=errors,
        warnings=warnings,
        profile=profile_frame(frame, schema),
        data_docs=str(page),
        institution_page=str(checked.local_page),
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
        shortfalls.append(
            f"institutions that passed hold {share:.1%} of {total_rows} rows, policy requires {min_row_share:.1%}"
        )
    if shortfalls:
        excluded = "; ".join(f"{r.institution}: {' | '.join(r.reasons)}" for r in reports if not r.passed)
        raise QuorumNotMet(f"{'; '.join(shortfalls)}; nothing was trained or registered. Excluded: {excluded}")
    return [r.institution for r in admitted]
