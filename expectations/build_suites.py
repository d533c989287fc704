"""Writes the GX suite of every schema under schemas/ that has none yet (one suite per schema version).

    uv run python expectations/build_suites.py

The JSON under expectations/gx/ is what runs use; tasks/suites.py says how a schema becomes checks.
A schema whose checks changed without a new `version` is refused: bump the version, run this
again, review the new suite's JSON and commit both.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.schema import SchemaError, available_schemas, load_schema  # noqa: E402
from tasks.suites import SuiteOutOfDate, committed_checks, write_suite  # noqa: E402


def main() -> None:
    here = Path(__file__).resolve().parent
    failed = False
    for name in available_schemas():
        try:
            schema = load_schema(name)
        except SchemaError as error:  # said, and the others still built
            print(error)
            failed = True
            continue
        fresh = committed_checks(here, schema.suite) is None
        try:
            count = write_suite(schema, here)
        except SuiteOutOfDate as error:
            print(error)
            failed = True
            continue
        print(f"{'wrote' if fresh else 'up to date:'} suite {schema.suite} ({count} checks)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
