"""Writes the committed GX objects for the credit-default schema (suite `credit_default_v1`).

The JSON under expectations/gx/ is the source of truth that runs use; this script records
how it was made. Every check is severity `critical` (quarantines the institution) unless it
says `warning` (reported, institution admitted). Re-run it (`uv run python expectations/build_credit_default_v1.py`) after
changing a check here, review the JSON diff, and bump the suite version when the meaning of
a check changes.
"""

from pathlib import Path

import great_expectations as gx
import great_expectations.expectations as gxe

from tasks.schema import COLUMNS, ID_COLUMN, LABEL_COLUMN, PAY_STATUS_COLUMNS, BILL_COLUMNS, PAYMENT_COLUMNS
from tasks.validation import BATCH_DEFINITION, DATA_ASSET, DATA_SOURCE

SUITE = "credit_default_v1"
NUMERIC_TYPES = ["int8", "int16", "int32", "int64", "Int64", "float32", "float64", "Float64"]
MIN_ROWS = 200


def expectations() -> list[gxe.Expectation]:
    checks: list[gxe.Expectation] = []
    for column in COLUMNS:
        checks.append(gxe.ExpectColumnToExist(column=column, description=f"column {column} is present"))
    # Extra columns are reported but do not quarantine: they are ignored by training.
    checks.append(gxe.ExpectTableColumnsToMatchSet(
        column_set=COLUMNS, exact_match=True, severity="warning", description="no columns beyond the schema"))
    for column in COLUMNS:
        checks.append(gxe.ExpectColumnValuesToBeInTypeList(
            column=column, type_list=NUMERIC_TYPES, description=f"{column} is numeric"))
        checks.append(gxe.ExpectColumnValuesToNotBeNull(column=column, description=f"{column} has no missing values"))
    ranges = {
        "LIMIT_BAL": (1_000, 10_000_000),
        "AGE": (18, 100),
        **{c: (-10_000_000, 10_000_000) for c in BILL_COLUMNS},
        **{c: (0, 10_000_000) for c in PAYMENT_COLUMNS},
    }
    for column, (low, high) in ranges.items():
        checks.append(gxe.ExpectColumnValuesToBeBetween(
            column=column, min_value=low, max_value=high, description=f"{column} between {low} and {high}"))
    code_sets = {
        "SEX": [1, 2],
        "EDUCATION": [0, 1, 2, 3, 4, 5, 6],
        "MARRIAGE": [0, 1, 2, 3],
        **{c: list(range(-2, 10)) for c in PAY_STATUS_COLUMNS},
        LABEL_COLUMN: [0, 1],
    }
    for column, codes in code_sets.items():
        checks.append(gxe.ExpectColumnValuesToBeInSet(
            column=column, value_set=codes, description=f"{column} in code set {codes}"))
    checks.append(gxe.ExpectColumnValuesToBeUnique(column=ID_COLUMN, description=f"{ID_COLUMN} is unique"))
    checks.append(gxe.ExpectTableRowCountToBeBetween(
        min_value=MIN_ROWS, description=f"at least {MIN_ROWS} rows"))
    checks.append(gxe.ExpectColumnMeanToBeBetween(
        column=LABEL_COLUMN, min_value=0.01, max_value=0.6,
        description=f"{LABEL_COLUMN} positive rate between 0.01 and 0.6"))
    return checks


def main() -> None:
    context = gx.get_context(mode="file", project_root_dir=Path(__file__).parent)
    batch_definition = (
        context.data_sources.add_or_update_pandas(DATA_SOURCE)
        .add_dataframe_asset(DATA_ASSET)
        .add_batch_definition_whole_dataframe(BATCH_DEFINITION)
    )
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=SUITE, expectations=expectations()))
    context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=SUITE, data=batch_definition, suite=suite)
    )
    print(f"wrote suite {SUITE} with {len(suite.expectations)} expectations")


if __name__ == "__main__":
    main()
