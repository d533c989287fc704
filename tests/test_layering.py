"""Imports point one way: flows -> tasks -> fed_models, and only fed_models touches TFF; hostguard and riskmodel,
used by the others, import none of the project (riskmodel travels with every registered model)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package, forbidden", [
    ("fed_models", {"prefect", "mlflow", "great_expectations", "tasks", "flows", "node", "xgboost", "fed_trees"}),
    # The second engine, on the same terms: XGBoost only, no orchestration, no TFF.
    ("fed_trees", {"prefect", "mlflow", "great_expectations", "tasks", "flows", "node", "tensorflow",
                   "tensorflow_federated", "fed_models"}),
    ("tasks", {"tensorflow_federated", "xgboost", "flows", "node"}),
    # An institution's node runs the tasks' per-institution functions; the coordinator's flow calls it.
    ("node", {"tensorflow_federated", "flows"}),
    ("flows", {"tensorflow_federated", "fed_models"}),
    # Secure aggregation's protocol: cryptography and numpy, nothing of the training or the orchestration.
    ("secagg", {"prefect", "mlflow", "great_expectations", "tensorflow", "tensorflow_federated", "xgboost", "tasks",
                "flows", "fed_models", "fed_trees", "node", "riskmodel", "hostguard"}),
    ("hostguard", {"prefect", "mlflow", "great_expectations", "tensorflow", "tensorflow_federated", "tasks", "flows",
                   "fed_models", "riskmodel"}),
    # The exported model is shipped with every registered model: it may need nothing else of ours.
    ("riskmodel", {"prefect", "great_expectations", "tensorflow_federated", "tasks", "flows", "fed_models",
                   "hostguard"}),
])
def test_imports_point_one_way(package, forbidden):
    offenders = {f: sorted(names & forbidden) for f, names in _imports(package).items() if names & forbidden}
    assert offenders == {}


def test_an_institutions_node_starts_without_prefect_or_tensorflow():
    """The node serves validation, statistics, training and evaluation of its rows; Prefect's tasks wrap those
    functions on the coordinator only (tasks.per_institution), so a node never pays Prefect's import."""
    import subprocess
    import sys

    probe = ("import sys; import flows.cli, node.server, node.service; "
             "print(sorted(m for m in ('prefect', 'tensorflow', 'tensorflow_federated', 'mlflow') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"
