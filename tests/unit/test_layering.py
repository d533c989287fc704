"""Imports point one way (README, "Layout"): flows -> tasks -> consortium, engines, tracking -> institution ->
contract, with fed_models and fed_trees behind engines; only fed_models touches TFF; an engine is picked by name
only in engines.registry; no two modules import each other, however indirectly; hostguard and riskmodel, used by
the others, import none of the project (riskmodel travels with every registered model)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imported(path: Path) -> set[str]:
    """What a file imports, at any depth (a function-local import is an import too): each module, and each
    `module.name` of a `from module import name`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def _imports(package: str) -> dict[str, set[str]]:
    """Each file of `package` -> the top-level packages it imports."""
    return {
        str(path.relative_to(ROOT)): {name.split(".")[0] for name in _imported(path)}
        for path in (ROOT / package).rglob("*.py")
    }


# What turns counts into a report's statistics imports no orchestration, tracking, engine or node.
STATISTICS_OF_COUNTS = {
    "prefect",
    "mlflow",
    "great_expectations",
    "tensorflow",
    "tensorflow_federated",
    "xgboost",
    "flows",
    "tasks",
    "node",
    "consortium",
    "engines",
    "tracking",
    "fed_models",
    "fed_trees",
}


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("fed_models", {"prefect", "mlflow", "great_expectations", "tasks", "flows", "node", "xgboost", "fed_trees"}),
        # The second engine, on the same terms: XGBoost only, no orchestration, no TFF.
        (
            "fed_trees",
            {
                "prefect",
                "mlflow",
                "great_expectations",
                "tasks",
                "flows",
                "node",
                "tensorflow",
                "tensorflow_federated",
                "fed_models",
            },
        ),
        ("tasks", {"tensorflow_federated", "xgboost", "flows", "node"}),
        # The domain packages the tasks call: no Prefect task or flow of their own, no TFF but through fed_models.
        ("engines", {"tensorflow_federated", "flows", "tasks", "node", "tracking"}),
        ("tracking", {"tensorflow_federated", "flows", "tasks", "node", "fed_trees"}),
        ("consortium", {"prefect", "tensorflow_federated", "flows", "tasks", "tracking"}),
        # What runs at an institution: no orchestration, no tracking server (scoring and a downloaded champion load
        # MLflow inside the function that needs it; the node's fresh-interpreter test below checks it stays unloaded).
        # (Scoring reads the registry for the version it applies: tracking.versions, inside score_file.)
        (
            "institution",
            {
                "prefect",
                "tensorflow_federated",
                "flows",
                "tasks",
                "node",
                "consortium",
                "engines",
                "fed_models",
                "fed_trees",
            },
        ),
        # A champion's monitoring report: statistics of counts, below what runs or records it.
        (
            "monitoring",
            STATISTICS_OF_COUNTS,
        ),
        # A model's fair-lending figures: statistics of counts, below what runs or records it (as monitoring).
        (
            "fairness",
            STATISTICS_OF_COUNTS,
        ),
        # The run config: types only, below everything that takes it.
        (
            "runconfig",
            {
                "prefect",
                "mlflow",
                "tensorflow",
                "tensorflow_federated",
                "flows",
                "tasks",
                "node",
                "consortium",
                "engines",
                "tracking",
                "institution",
                "fed_models",
                "fed_trees",
            },
        ),
        (
            "contract",
            {
                "prefect",
                "tensorflow",
                "tensorflow_federated",
                "flows",
                "tasks",
                "node",
                "consortium",
                "engines",
                "tracking",
                "institution",
                "runconfig",
                "fed_models",
                "fed_trees",
            },
        ),
        (
            "errors",
            {
                "prefect",
                "mlflow",
                "flows",
                "tasks",
                "node",
                "consortium",
                "engines",
                "tracking",
                "institution",
                "contract",
                "fed_models",
                "fed_trees",
                "riskmodel",
                "hostguard",
                "secagg",
            },
        ),
        # An institution's node runs the tasks' per-institution functions; the coordinator's flow calls it.
        ("node", {"tensorflow_federated", "flows", "tasks", "prefect", "tracking", "engines"}),
        ("flows", {"tensorflow_federated", "fed_models"}),
        # Secure aggregation's protocol: cryptography and numpy, nothing of the training or the orchestration.
        (
            "secagg",
            {
                "prefect",
                "mlflow",
                "great_expectations",
                "tensorflow",
                "tensorflow_federated",
                "xgboost",
                "tasks",
                "flows",
                "fed_models",
                "fed_trees",
                "node",
                "riskmodel",
                "hostguard",
            },
        ),
        (
            "hostguard",
            {
                "prefect",
                "mlflow",
                "great_expectations",
                "tensorflow",
                "tensorflow_federated",
                "tasks",
                "flows",
                "fed_models",
                "riskmodel",
            },
        ),
        # The exported model is shipped with every registered model: it may need nothing else of ours.
        (
            "riskmodel",
            {"prefect", "great_expectations", "tensorflow_federated", "tasks", "flows", "fed_models", "hostguard"},
        ),
    ],
)
def test_imports_point_one_way(package, forbidden):
    offenders = {f: sorted(names & forbidden) for f, names in _imports(package).items() if names & forbidden}
    assert offenders == {}


def test_an_institutions_node_starts_without_prefect_or_tensorflow():
    """The node serves validation, statistics, training and evaluation of its rows; Prefect's tasks wrap those
    functions on the coordinator only (tasks.per_institution), so a node never pays Prefect's import."""
    import subprocess
    import sys

    probe = (
        "import sys; import flows.cli, node.server, node.service; "
        "print(sorted(m for m in ('prefect', 'tensorflow', 'tensorflow_federated', 'mlflow') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


PACKAGES = (
    "flows",
    "tasks",
    "consortium",
    "contract",
    "engines",
    "errors",
    "institution",
    "monitoring",
    "fairness",
    "runconfig",
    "tracking",
    "fed_models",
    "fed_trees",
    "hostguard",
    "riskmodel",
    "node",
    "secagg",
    "expectations",
)


def _module_graph() -> dict[str, set[str]]:
    """Each project module -> the project modules it imports (a function-local import only hides a cycle)."""
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    return {name: {m for m in _imported(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_module_imports_itself_through_others():
    graph, cycles, seen = _module_graph(), [], set()

    def visit(module: str, path: list[str]) -> None:
        for imported in sorted(graph[module]):
            if imported in path:
                cycles.append(path[path.index(imported) :] + [imported])
            elif imported not in seen:
                seen.add(imported)
                visit(imported, path + [imported])

    for module in sorted(graph):
        if module not in seen:
            seen.add(module)
            visit(module, [module])
    assert cycles == []


def test_only_the_engine_registry_picks_an_engine_by_name():
    """`training.engine` is compared nowhere else: evaluation, promotion, registration, the card and lineage ask
    the engine (engines.base.Engine) what they need."""
    comparisons = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Compare) and any(  # training.engine, config.training.engine
                    isinstance(side, ast.Attribute) and side.attr == "engine" and "training" in ast.unparse(side)
                    for side in (node.left, *node.comparators)
                ):
                    comparisons.setdefault(str(path.relative_to(ROOT)), []).append(node.lineno)
    assert comparisons == {}
