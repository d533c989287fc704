"""errors: every error a user is told in one line has the one root, and each kind its exit code from one table."""

import ast
import importlib
from pathlib import Path

from errors import ExitCode, FedriskError

ROOT = Path(__file__).resolve().parents[2]
# The application's packages; the libraries beside them (secagg, hostguard, fed_models, fed_trees, riskmodel)
# import nothing of the project, and the CLI words their errors where it meets them.
APPLICATION = ("flows", "tasks", "consortium", "contract", "engines", "institution", "tracking", "node")


def _exception_classes():
    for package in APPLICATION:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef) and any(
                    ast.unparse(base).endswith(("Error", "Exception", "LookupError")) for base in node.bases
                ):
                    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                    yield getattr(importlib.import_module(module), node.name)


def test_every_application_error_has_the_one_root():
    found = list(_exception_classes())
    assert len(found) >= 20
    assert [c.__qualname__ for c in found if not issubclass(c, FedriskError)] == []


def test_a_bad_input_exits_2_and_a_refusal_1():
    from contract.schema import SchemaError
    from flows.config import ConfigError
    from flows.lock import RetrainingBusy
    from institution.validation import QuorumNotMet

    assert ConfigError.exit_code == SchemaError.exit_code == ExitCode.USAGE == 2
    assert QuorumNotMet.exit_code == RetrainingBusy.exit_code == ExitCode.FAILED == 1


def test_the_trigger_answers_from_the_same_table():
    from flows.trigger import EXIT_CODES, STILL_RUNNING_EXIT_CODE

    assert set(EXIT_CODES.values()) | {STILL_RUNNING_EXIT_CODE} <= set(ExitCode)
    assert (EXIT_CODES["CRASHED"], EXIT_CODES["CANCELLED"], STILL_RUNNING_EXIT_CODE) == (3, 4, 5)
