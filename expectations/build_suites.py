"""Writes the GX suite of every schema under schemas/ that has none yet (one suite per schema version).

    uv run python expectations/build_suites.py
    uv run python expectations/build_suites.py --redraft NAME   # rewrite an unused draft's suite in place

The JSON under expectations/gx/ is what runs use; contract/suites.py says how a schema becomes checks.
A schema whose checks changed without a new `version` is refused: bump the version, run this
again, review the new suite's JSON and commit both. While no registered model (in the store of
MLFLOW_TRACKING_URI) was trained on a version, `--redraft NAME` rewrites its suite in place instead,
recording the rewrite in the suite's meta (`fedrisk.redrafts`).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract.schema import SchemaError, available_schemas, load_schema  # noqa: E402
from contract.suites import (  # noqa: E402
    SuiteOutOfDate,
    committed_checks,
    redraft_suite,
    require_context,
    write_suite,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--redraft",
        metavar="NAME",
        action="append",
        default=[],
        help="rewrite this schema's current suite in place (no registered model trained on it)",
    )
    args = parser.parse_args()
    from flows.settings import Settings

    settings = Settings()
    here = settings.expectations_dir  # where runs read suites (FEDRISK_EXPECTATIONS_DIR moves them all)
    unknown = sorted(set(args.redraft) - set(available_schemas()))
    if unknown:
        print(f"--redraft: unknown schema(s) {', '.join(unknown)} (schemas: {', '.join(available_schemas())})")
        sys.exit(2)
    try:
        require_context(here)
    except SuiteOutOfDate as error:
        print(error)
        sys.exit(1)
    failed = False
    for name in available_schemas():
        try:
            schema = load_schema(name)
        except SchemaError as error:  # said, and the others still built
            print(error)
            failed = True
            continue
        before = committed_checks(here, schema.suite)
        try:
            if name in args.redraft:
                count = redraft_suite(schema, here, settings.mlflow_tracking_uri)
            else:
                count = write_suite(schema, here)
        except SuiteOutOfDate as error:
            print(error)
            failed = True
            continue
        after = committed_checks(here, schema.suite)
        said = "wrote" if before is None else "rewrote in place" if before != after else "up to date:"
        print(f"{said} suite {schema.suite} ({count} checks)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
