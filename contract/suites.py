"""Great Expectations suites generated from schemas: one committed suite per schema version.

`expected_checks` turns a schema into the suite's checks as plain values (cheap, no GX import), so
a run can confirm at the edge that the committed suite is the one its schema describes; a change
to a check without a new schema version is refused. `write_suite` writes it with GX
(`uv run python expectations/build_suites.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

from contract.schema import Schema, percent
from errors import ExitCode, FedriskError

NUMERIC_TYPES = ["int8", "int16", "int32", "int64", "Int64", "float32", "float64", "Float64"]
TEXT_TYPES = ["object", "str", "string"]
DATA_SOURCE = "institutions"
DATA_ASSET = "extract"
BATCH_DEFINITION = "whole_extract"


class SuiteOutOfDate(FedriskError, ValueError):
    """The committed suite of a schema version differs from what the schema describes."""

    exit_code = ExitCode.USAGE


def _check(type_: str, description: str, severity: str = "critical", **kwargs: object) -> dict:
    return {"type": type_, "kwargs": kwargs, "severity": severity, "description": description}


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def expected_checks(schema: Schema) -> list[dict]:
    """Every check of `schema`'s suite, in order: columns, per-feature types/missing/ranges/levels,
    ID, table size, label rate, repeated rows."""
    columns, label = schema.columns, schema.label.column
    checks = [_check("expect_column_to_exist", f"column {c} is present", column=c) for c in columns]
    # Extra columns are reported but do not quarantine: they are ignored by training.
    checks.append(
        _check("expect_table_columns_to_match_set", "no columns beyond the schema", "warning", column_set=columns)
    )  # exact_match: GX's default
    for name, feature in schema.features.items():
        text = feature.type == "categorical" and not feature.coded
        checks.append(
            _check(
                "expect_column_values_to_be_in_type_list",
                f"{name} is {'text' if text else 'numeric'}",
                column=name,
                type_list=TEXT_TYPES if text else NUMERIC_TYPES,
            )
        )
        if feature.missing is None:
            checks.append(_check("expect_column_values_to_not_be_null", f"{name} has no missing values", column=name))
        else:
            rate = feature.missing.max_rate
            checks.append(
                _check(
                    "expect_column_values_to_not_be_null",
                    f"{name} missing in at most {percent(rate)} of rows",
                    column=name,
                    mostly=round(1 - rate, 6),
                )
            )
        if feature.type == "numeric":
            if feature.min is not None or feature.max is not None:
                low, high = feature.min, feature.max
                checks.append(
                    _check(
                        "expect_column_values_to_be_between",
                        f"{name} between {_number(low) if low is not None else '-inf'} and "
                        f"{_number(high) if high is not None else 'inf'}",
                        column=name,
                        min_value=None if low is None else _number(low),
                        max_value=None if high is None else _number(high),
                    )
                )
            if feature.allowed is not None:
                codes = [_number(v) for v in feature.allowed]
                checks.append(
                    _check(
                        "expect_column_values_to_be_in_set", f"{name} in code set {codes}", column=name, value_set=codes
                    )
                )
        elif feature.type == "categorical" and feature.levels != "open":
            checks.append(
                _check(
                    "expect_column_values_to_be_in_set",
                    f"{name} in its {len(feature.levels)} levels",
                    column=name,
                    value_set=list(feature.levels),
                )
            )
        elif feature.type == "boolean":
            checks.append(
                _check("expect_column_values_to_be_in_set", f"{name} is 0 or 1", column=name, value_set=[0, 1])
            )
        checks.append(
            _check(
                "expect_column_unique_value_count_to_be_between",
                f"{name} is not constant",
                "warning" if schema.constant_features == "warning" else "critical",
                column=name,
                min_value=2,
            )
        )
    checks.append(
        _check("expect_column_values_to_be_in_type_list", f"{label} is numeric", column=label, type_list=NUMERIC_TYPES)
    )
    checks.append(_check("expect_column_values_to_not_be_null", f"{label} has no missing values", column=label))
    checks.append(
        _check(
            "expect_column_values_to_be_in_set",
            f"{label} is {schema.label.positive!r} ({schema.label.meaning}) or {schema.label.negative!r}",
            column=label,
            value_set=[0, 1],
        )
    )
    if schema.id:
        checks.append(
            _check("expect_column_values_to_not_be_null", f"{schema.id} has no missing values", column=schema.id)
        )
        checks.append(_check("expect_column_values_to_be_unique", f"{schema.id} is unique", column=schema.id))
    checks.append(
        _check(
            "expect_table_row_count_to_be_between",
            f"at least {schema.min_rows} rows",
            min_value=schema.min_rows,
            max_value=None,
        )
    )
    low, high = schema.label_rate
    checks.append(
        _check(
            "expect_column_mean_to_be_between",
            f"{label} positive rate between {low:g} and {high:g}",
            column=label,
            min_value=low,
            max_value=high,
        )
    )
    share = schema.max_duplicate_share
    checks.append(
        _check(
            "expect_compound_columns_to_be_unique",
            f"at most {share:.1%} of rows repeat another row (the ID aside)",
            column_list=[*schema.features, label],
            mostly=round(1 - share, 6),
        )
    )
    return checks


def suite_path(expectations_dir: Path, suite: str) -> Path:
    return Path(expectations_dir) / "gx" / "expectations" / f"{suite}.json"


def committed_checks(expectations_dir: Path, suite: str) -> list[dict] | None:
    """The committed suite's checks in `expected_checks`' form (ids and GX's defaults aside); None if absent."""
    path = suite_path(expectations_dir, suite)
    if not path.exists():
        return None
    return [
        _check(e["type"], e.get("description") or "", e.get("severity", "critical"), **e["kwargs"])
        for e in json.loads(path.read_text())["expectations"]
    ]


def _plain(value: object) -> object:
    """Numbers as GX writes them back (1000.0 -> 1000), recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _normalized(checks: list[dict]) -> list[str]:
    """Checks as comparable text: GX leaves out defaults (mostly 1, None bounds) when it writes a suite."""
    return [
        json.dumps(
            {
                **c,
                "kwargs": {
                    k: _plain(v) for k, v in c["kwargs"].items() if v is not None and not (k == "mostly" and v == 1.0)
                },
            },
            sort_keys=True,
        )
        for c in checks
    ]


PROJECT_EXPECTATIONS = Path(__file__).resolve().parents[1] / "expectations"


def _build_command(expectations_dir: Path) -> str:
    """The command that writes suites where runs read them (build_suites.py honours FEDRISK_EXPECTATIONS_DIR)."""
    moved = Path(expectations_dir).resolve() != PROJECT_EXPECTATIONS
    return (
        f"{f'FEDRISK_EXPECTATIONS_DIR={expectations_dir} ' if moved else ''}uv run python expectations/build_suites.py"
    )


def _new_version_or_redraft(schema: Schema, expectations_dir: Path) -> str:
    """The two ways out of a suite that no longer matches its schema version, as commands."""
    build = _build_command(expectations_dir)
    return (
        f"set version: {schema.version + 1}, then `{build}`); a draft no registered model was trained on can "
        f"instead be rewritten in place: `{build} --redraft {schema.name}`"
    )


def require_context(expectations_dir: Path) -> None:
    """SuiteOutOfDate unless `expectations_dir` is a GX context fedrisk can read suites from (FEDRISK_EXPECTATIONS_DIR
    names a whole context: its suites, validation definitions and results, not the results alone)."""
    if not (Path(expectations_dir) / "gx" / "great_expectations.yml").is_file():
        raise SuiteOutOfDate(
            f"{expectations_dir} (FEDRISK_EXPECTATIONS_DIR) is not a Great Expectations context: it has no "
            f"gx/great_expectations.yml. It must hold the suites extracts are checked with, as well as their "
            f"results: copy the project's (`mkdir -p {expectations_dir} && cp -r {PROJECT_EXPECTATIONS / 'gx'} "
            f"{expectations_dir}/`), or unset FEDRISK_EXPECTATIONS_DIR"
        )


# The schema's settings that are not checks but decide what a version's models and artifacts are; a suite
# records them in its meta, and a suite written before they were recorded was written under these defaults.
SCHEMA_SETTINGS = "fedrisk.schema_settings"
_SETTINGS_BEFORE_RECORDED = {"rare_level_min_rows": 10}


def schema_settings(schema: Schema) -> dict:
    """What a suite records of its schema beside the checks: the rare-level threshold (which levels every
    artifact may name)."""
    return {"rare_level_min_rows": schema.rare_level_min_rows}


def committed_settings(expectations_dir: Path, suite: str) -> dict:
    meta = json.loads(suite_path(expectations_dir, suite).read_text()).get("meta") or {}
    return {**_SETTINGS_BEFORE_RECORDED, **meta.get(SCHEMA_SETTINGS, {})}


def require_current_suite(schema: Schema, expectations_dir: Path) -> None:
    """SuiteOutOfDate unless the committed suite for this schema version is exactly what it describes."""
    require_context(expectations_dir)
    committed = committed_checks(expectations_dir, schema.suite)
    if committed is None:
        raise SuiteOutOfDate(
            f"schema {schema.name} version {schema.version} has no committed suite "
            f"{suite_path(expectations_dir, schema.suite)}; write it with "
            f"`{_build_command(expectations_dir)}` and commit it"
        )
    recorded, now = committed_settings(expectations_dir, schema.suite), schema_settings(schema)
    settings = [
        f"{key} from {recorded.get(key)} to {value}" for key, value in now.items() if recorded.get(key) != value
    ]
    if settings:
        raise SuiteOutOfDate(
            f"schema {schema.name} version {schema.version} changes {', '.join(settings)} under the "
            f"same version (its suite {schema.suite} was written with the former): it decides "
            f"which levels every model and artifact of the version may name, so it needs a new "
            f"schema version ({_new_version_or_redraft(schema, expectations_dir)}"
        )
    expected, found = _normalized(expected_checks(schema)), _normalized(committed)
    if expected != found:
        changed = [json.loads(c)["description"] for c in expected if c not in found]
        dropped = [json.loads(c)["description"] for c in found if c not in expected]
        detail = "; ".join(
            filter(
                None,
                [
                    f"new or changed: {', '.join(changed[:5])}" if changed else "",
                    f"no longer in the schema: {', '.join(dropped[:5])}" if dropped else "",
                ],
            )
        )
        raise SuiteOutOfDate(
            f"schema {schema.name} version {schema.version} no longer matches its committed suite "
            f"{schema.suite} ({detail}): a change to a check needs a new schema version "
            f"({_new_version_or_redraft(schema, expectations_dir)}"
        )


REDRAFTS = "fedrisk.redrafts"  # the suite's meta: each in-place rewrite of a draft, when and what it replaced


def models_trained_on(tracking_uri: str, schema: Schema) -> list[str]:
    """The registered versions (NAME/VERSION) in the MLflow store at `tracking_uri` trained on this schema version;
    registration tags each version with the schema's name and version (tracking.lineage)."""
    from mlflow import MlflowClient

    found = MlflowClient(tracking_uri).search_model_versions(f"tags.`schema.name` = '{schema.name}'")
    return sorted(f"{v.name}/{v.version}" for v in found if v.tags.get("schema.version") == str(schema.version))


def redraft_suite(schema: Schema, expectations_dir: Path, tracking_uri: str) -> int:
    """Rewrite the committed suite of a schema version no registered model was trained on (a draft still being
    edited), in place; the rewrite is recorded in the suite's meta (`fedrisk.redrafts`: when, and the sha256 of
    the checks it replaced) and in git when the suite is committed. SuiteOutOfDate once a model used it."""
    import datetime
    import hashlib

    from hostguard.credentials import masked

    used = models_trained_on(tracking_uri, schema)
    if used:
        raise SuiteOutOfDate(
            f"schema {schema.name} version {schema.version} trained {', '.join(used[:5])}"
            f"{' and more' if len(used) > 5 else ''} (registered in {masked(tracking_uri)}): its "
            f"suite stays as those models were checked with; set version: {schema.version + 1} "
            f"and run `{_build_command(expectations_dir)}`"
        )
    existing = committed_checks(expectations_dir, schema.suite)
    if existing is None or (
        _normalized(existing) == _normalized(expected_checks(schema))
        and committed_settings(expectations_dir, schema.suite) == schema_settings(schema)
    ):
        return write_suite(schema, expectations_dir)
    record = {
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "replaced_checks_sha256": hashlib.sha256("\n".join(_normalized(existing)).encode()).hexdigest(),
        "no_model_trained_on_it_in": masked(tracking_uri),
    }
    return write_suite(schema, expectations_dir, redraft=record)


def write_suite(schema: Schema, expectations_dir: Path, redraft: dict | None = None) -> int:
    """Write the schema version's suite and validation definition into the GX context; return the checks.

    Refuses (SuiteOutOfDate) to overwrite a committed suite of the same version with different checks, unless
    `redraft` (from redraft_suite: the record of an in-place rewrite of an unused draft).
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    existing = committed_checks(expectations_dir, schema.suite)
    if existing is not None and redraft is None:
        require_current_suite(schema, expectations_dir)
    classes = {cls.__name__: cls for cls in vars(gxe).values() if isinstance(cls, type)}
    expectations = []
    for check in expected_checks(schema):
        name = "".join(part.title() for part in check["type"].split("_"))
        expectations.append(
            classes[name](**check["kwargs"], severity=check["severity"], description=check["description"])
        )
    context = gx.get_context(mode="file", project_root_dir=Path(expectations_dir))
    if redraft is not None:
        committed = context.suites.get(schema.suite)
        meta = {
            **committed.meta,
            REDRAFTS: [*committed.meta.get(REDRAFTS, []), redraft],
            SCHEMA_SETTINGS: schema_settings(schema),
        }
        context.suites.add_or_update(
            gx.ExpectationSuite(name=schema.suite, expectations=expectations, id=committed.id, meta=meta)
        )
    elif existing is None:
        batch_definition = (
            context.data_sources.get(DATA_SOURCE).get_asset(DATA_ASSET).get_batch_definition(BATCH_DEFINITION)
        )
        suite = context.suites.add_or_update(
            gx.ExpectationSuite(
                name=schema.suite, expectations=expectations, meta={SCHEMA_SETTINGS: schema_settings(schema)}
            )
        )
        context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=schema.suite, data=batch_definition, suite=suite)
        )
    return len(expectations)
