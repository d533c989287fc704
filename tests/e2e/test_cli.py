"""The `fedrisk` CLI.

Argument handling goes through Click's runner; commands that run flows are called directly,
sharing the session's Prefect API and TFF runtime, with pytest capturing what they print.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from mlflow import MlflowClient
from typer.testing import CliRunner

from contract.synthetic import synthesize
from flows.cli import app, data, ledger, models, runs, schema
from flows.settings import PROJECT_ROOT
from tests.conftest import cli_output, free_port

runner = CliRunner()


@pytest.fixture
def console(monkeypatch):
    """The CLI's output since the last read (see tests.conftest.cli_output)."""
    buffer = cli_output(monkeypatch)

    def read() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    return read


def _exit_code(command, **kwargs) -> int:
    try:
        command(**kwargs)
    except typer.Exit as stop:
        return stop.exit_code
    return 0


def _invoke(*args):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"}, catch_exceptions=False)


@pytest.mark.parametrize(
    "command", [[], ["trigger"], ["demo"], ["data", "synth"], ["models", "list"], ["lineage"], ["monitor"]]
)
def test_help_uses_the_placeholders_people_know(command):
    help_text = _invoke(*command, "--help").output
    assert not re.search(r"<(bool|str|int|float|path|list\[str\])[^>]*>|\{[A-Za-z@|/]+\}", help_text), help_text
    if command == ["trigger"]:
        assert re.search(r"Usage: \S+ trigger \[OPTIONS\] DEPLOYMENT\s", help_text)
        assert re.search(r"--param +-p +KEY=VALUE", help_text) and re.search(r"--timeout +SECONDS", help_text)
    if command == []:
        assert re.search(r"--verbose +-v +Also show what the libraries log", help_text)


def test_data_synth_writes_one_folder_per_institution(tmp_path):
    result = _invoke("data", "synth", "--out", str(tmp_path), "--institutions", "3", "--rows-scale", "0.1")
    assert result.exit_code == 0
    assert sorted(p.parent.name for p in tmp_path.glob("*/credit.csv")) == [
        "alder_bank",
        "birch_credit_union",
        "cedar_savings",
    ]
    assert len(pd.read_csv(tmp_path / "cedar_savings" / "credit.csv")) == 400


def test_data_synth_writes_a_later_month_in_which_one_portfolio_moved(tmp_path):
    base = ["data", "synth", "--institutions", "2", "--rows-scale", "0.1", "--seed", "5"]
    result = _invoke(*base, "--out", str(tmp_path / "a"), "--change", "birch_credit_union.median_limit=20000")
    assert result.exit_code == 0, result.output
    moved = pd.read_csv(tmp_path / "a" / "birch_credit_union" / "credit.csv")["LIMIT_BAL"].median()
    _invoke(*base, "--out", str(tmp_path / "b"))
    assert moved < 0.3 * pd.read_csv(tmp_path / "b" / "birch_credit_union" / "credit.csv")["LIMIT_BAL"].median()
    for change, message in (
        ("birch_credit_union.colour=3", "--change birch_credit_union.colour=3: FIELD is one of rows, default_rate"),
        ("birch_credit_union.rows=many", "--change birch_credit_union.rows=many: could not convert"),
        ("elm_bank.rows=5", "--change: no portfolio named ['elm_bank'] (they are alder_bank, birch_credit_union)"),
    ):
        result = _invoke(*base, "--out", str(tmp_path / "c"), "--change", change)
        assert result.exit_code == 2 and message in result.output, result.output


def test_bad_config_exits_2_naming_the_field(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model_name: m\ninstitutions: [{name: a, path: a.csv}]\ntraining: {rounds: -3}\n")
    result = _invoke("retrain", "--config", str(config))
    assert result.exit_code == 2
    assert "training.rounds: Input should be greater than or equal to 1 (got -3)" in result.output


@pytest.mark.usefixtures("prefect_api")
def test_validate_shows_the_quarantined_institution_and_exits_1_below_quorum(tmp_path, small_consortium, monkeypatch):
    wide = cli_output(monkeypatch, width=400)  # the reason's whole path on one line (a narrower table folds it)
    console = wide.getvalue
    broken = tmp_path / "dune.csv"
    broken.write_bytes(small_consortium["dune_finance"].read_bytes()[:50])  # cut inside the header
    config = tmp_path / "run.yaml"
    config.write_text(
        "model_name: m\nquorum: 2\ninstitutions:\n"
        f"  - {{name: cedar_savings, path: {small_consortium['cedar_savings']}}}\n"
        f"  - {{name: dune_finance, path: {broken}}}\n"
    )
    assert _exit_code(runs.validate, config=config) == 1
    output = console()
    assert "cedar_savings" in output and "admitted" in output
    assert "quarantined" in output and f"{broken}: a header line and no rows: nothing to check or train on" in output
    assert "1 of 2 institutions passed; quorum is 2" in output

    config.write_text(config.read_text().replace("quorum: 2", "quorum: 1"))
    assert _exit_code(runs.validate, config=config) == 0
    assert "1 of 2 institutions passed; quorum 1 met" in console()


@pytest.mark.usefixtures("prefect_api")
def test_schema_check_says_whether_every_institution_passes_before_a_retraining(tmp_path, small_consortium, console):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model_name: m\nquorum: 1\ninstitutions:\n"
        + "".join(
            f"  - {{name: {name}, path: {small_consortium[name]}}}\n" for name in ("cedar_savings", "dune_finance")
        )
    )
    assert _exit_code(schema.check, config=config) == 0
    assert (
        "schema credit_default version 2 (suite credit_default_v2, current): all 2 institutions pass it; a "
        "retraining can start" in console()
    )
    young = pd.read_csv(small_consortium["dune_finance"])
    young["AGE"] = 12
    young.to_csv(tmp_path / "dune.csv", index=False)
    config.write_text(config.read_text().replace(str(small_consortium["dune_finance"]), str(tmp_path / "dune.csv")))
    assert _exit_code(schema.check, config=config) == 1  # the quorum of 1 is met, but not every institution
    output = console()
    assert "AGE between 18 and 100: failed for " in output
    assert "(suite credit_default_v2, current): 1 of 2 institutions fail it: dune_finance" in output


def test_unreachable_tracking_server_stops_before_training(small_consortium, tmp_path, prefect_api):
    """Run as a user would, in its own process: a dead MLflow URL fails fast, before any round."""
    port = free_port()  # a loopback port nobody listens on
    config = tmp_path / "run.yaml"
    config.write_text(
        "model_name: m\ninstitutions:\n"
        + "".join(f"  - {{name: {name}, path: {path}}}\n" for name, path in small_consortium.items())
    )
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "COLUMNS": "200",
        "PREFECT_API_URL": prefect_api,
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "fedrisk"), "retrain", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"Retraining stopped: MLflow tracking at http://127.0.0.1:{port} failed:" in output
    assert "Nothing was registered." in output
    assert "round 1/" not in output


def test_a_temporary_prefect_api_that_cannot_start_is_one_clear_line(small_consortium, tmp_path):
    """No Prefect server configured and the local database unusable: the cause, exit 1, no traceback."""
    config = tmp_path / "run.yaml"
    config.write_text(
        "model_name: m\ninstitutions:\n"
        + "".join(f"  - {{name: {name}, path: {path}}}\n" for name, path in small_consortium.items())
    )
    env = {
        **{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
        "COLUMNS": "200",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'absent' / 'prefect.db'}",
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "fedrisk"), "validate", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert re.search(
        r"Validation not run: the temporary Prefect API exited with code \d+ on start: .*unable to open "
        r"database file",
        output,
    ), output
    assert "Traceback" not in output


@pytest.mark.usefixtures("prefect_api")
def test_validate_on_the_real_uci_banks_then_with_one_bank_corrupted(tmp_path, console):
    from tests.conftest import require_uci

    uci = require_uci()
    assert _exit_code(runs.validate, config=PROJECT_ROOT / "configs" / "uci_default_credit.yaml") == 0
    assert "3 of 3 institutions passed; quorum 2 met" in console()

    for bank in ("bank_a", "bank_b", "bank_c"):
        shutil.copy(uci / f"{bank}.csv", tmp_path / f"{bank}.csv")
    data = (tmp_path / "bank_b.csv").read_bytes()
    (tmp_path / "bank_b.csv").write_bytes(data[: len(data) // 2] + b"\xff\xfe" + data[len(data) // 2 :])
    config = tmp_path / "run.yaml"
    config.write_text(
        (PROJECT_ROOT / "configs" / "uci_default_credit.yaml")
        .read_text()
        .replace("../../shared/data/uci_default_credit", str(tmp_path))
        .replace("quorum: 2", "quorum: 3")
    )
    assert _exit_code(runs.validate, config=config) == 1
    output = console()
    assert f"institution 'bank_b': {tmp_path / 'bank_b.csv'}: not UTF-8 text" in output.replace("\n", "")
    assert "2 of 3 institutions passed; quorum is 3" in output


@pytest.fixture
def registry_copy(registered, tmp_path, monkeypatch) -> str:
    """A copy of the registered store's database (artifacts stay where they are) to change freely."""
    database = tmp_path / "mlflow.db"
    shutil.copy(registered.tracking_uri.removeprefix("sqlite:///"), database)
    uri = f"sqlite:///{database}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_the_comparison_with_the_baselines_has_a_weighted_row_as_the_new_models_table_does(registered, console):
    from institution.evaluation import weighted_metrics

    summary = registered.first  # retrained with the simulation baselines
    runs.print_summary(summary)
    output = console()
    figures = [
        summary.weighted["roc_auc"],
        *(weighted_metrics(summary.evaluations, role)["roc_auc"] for role in ("local_only", "pooled")),
    ]
    assert re.search(r"│ weighted +│" + "".join(rf" +{f:.4f} │" for f in figures) + r"\n", output), output
    assert "weighted: by holdout rows; local-only, pooled data:" in output


def test_models_list_shows_versions_aliases_decisions_and_metrics(registered, registry_copy, console):
    models.list_versions(name=registered.name)
    lines = [line for line in console().splitlines() if line.startswith("│")]
    first, second = registered.first.weighted, registered.second.weighted
    assert re.match(
        rf"│ 2 .*│ challenger +│ not promoted +│ +{second['roc_auc']:.4f} │ +{second['pr_auc']:.4f} │", lines[0]
    )
    assert re.match(rf"│ 1 .*│ champion +│ promoted +│ +{first['roc_auc']:.4f} │", lines[1])
    assert _exit_code(models.list_versions, name="no_such_model") == 1
    assert "no registered model 'no_such_model'" in console()


def test_models_promote_overrides_the_policy_and_records_why(registered, registry_copy, console):
    import getpass

    assert _exit_code(models.promote, name=registered.name, version="2", reason="  ") == 1
    assert "a manual promotion needs a reason" in console()
    assert _exit_code(models.promote, name=registered.name, version="9", reason="x") == 1
    assert f"{registered.name} has no version 9" in console()

    models.promote(name=registered.name, version="2", reason="CRO sign-off 2026-11-25: v1 calibration drift")
    assert console().startswith(f"{registered.name} version 2 is now champion (was: 1)")
    client = MlflowClient(registry_copy)
    assert client.get_registered_model(registered.name).aliases["champion"] == 2
    tags = client.get_model_version(registered.name, "2").tags
    assert tags["promotion.decision"] == "promoted (manual override)"
    assert tags["promotion.override.policy_decision"] == "not promoted"
    assert tags["promotion.override.reason"] == "CRO sign-off 2026-11-25: v1 calibration drift"
    assert tags["promotion.override.by"] == getpass.getuser() and tags["promotion.override.previous_champion"] == "1"
    assert tags["promotion.override.at"].startswith("20")
    assert _exit_code(models.promote, name=registered.name, version="2", reason="again") == 1
    assert "already the champion" in console()


@pytest.mark.usefixtures("prefect_api")
def test_ledger_shows_each_retrainings_charge_and_what_is_left_of_each_budget(tracking_uri, tmp_path, console):
    from engines.privacy import plan_privacy
    from runconfig import PrivacyConfig, TrainingConfig
    from tasks.privacy import reserve_privacy_budget, settle_privacy_budget

    assert _exit_code(ledger.ledger, config=None) == 0
    assert console().strip() == f"No differentially private retrainings yet in {tracking_uri}: nothing is spent."

    plan = plan_privacy(
        PrivacyConfig(mechanism="record_level", noise_multiplier=1.5),
        TrainingConfig(rounds=10, batch_size=100),
        {"bank_a": 5000},
    )
    entry = reserve_privacy_budget(tracking_uri, "credit", "k1", "flow-1", plan, {"bank_a": None})
    settle_privacy_budget(tracking_uri, entry, plan)
    reserve_privacy_budget(tracking_uri, "fraud", "k2", "flow-2", plan, {"bank_a": None})
    config = tmp_path / "run.yaml"
    config.write_text(
        "model_name: credit\ninstitutions:\n  - {name: bank_a, path: a.csv, privacy_budget: 5}\n"
        "privacy: {mechanism: record_level, noise_multiplier: 1.5}\n"
    )
    assert _exit_code(ledger.ledger, config=config) == 0
    out = console()
    epsilon = plan.institution("bank_a").epsilon
    assert re.search(rf"bank_a +│ credit +│ - +│ spent +│ +{epsilon:.4f} │ +0\.0002 │", out)
    assert re.search(rf"bank_a +│ fraud +│ - +│ reserved +│ +{epsilon:.4f} │", out)
    assert re.search(rf"bank_a +│ +{2 * epsilon:.4f} │ +0\.0004 │ +2 │ +5 │ +{5 - 2 * epsilon:.4f} │", out)


HEAVY = ("tensorflow", "tensorflow_federated", "prefect", "sklearn", "great_expectations", "xgboost", "keras")
FRESH_CLI = """
import atexit, json, sys
atexit.register(lambda: print("LOADED " + json.dumps([m for m in {heavy!r} if m in sys.modules])))
sys.argv = ["fedrisk", *{args!r}]
from flows.cli import app
app()
"""


@pytest.mark.parametrize("command", [["models", "list"], ["ledger"], ["lineage"]])
def test_read_only_commands_load_mlflow_and_nothing_heavy(registered, registry_copy, command):
    """Each read-only command in its own interpreter, as a person runs it, with no Prefect server configured:
    it answers from MLflow (lineage: and the local Prefect database, read-only) without importing TensorFlow,
    Prefect or scikit-learn, or starting a temporary Prefect API. (Its time: benchmarks/cli_startup.py.)"""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    args = {
        "models": [*command, registered.name],
        "ledger": command,
        "lineage": [*command, f"{registered.name}@champion"],
    }[command[0]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update(
        MLFLOW_TRACKING_URI=registry_copy,
        COLUMNS="200",
        PREFECT_API_DATABASE_CONNECTION_URL=PREFECT_API_DATABASE_CONNECTION_URL.value(),
    )
    done = subprocess.run(
        [sys.executable, "-c", FRESH_CLI.format(heavy=HEAVY, args=args)],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "LOADED []", done.stdout
    if command == ["models", "list"]:  # both versions, newest first (the title wraps with the store's path)
        assert re.search(r"\b2\b.*\bchallenger\b.*\n.*\b1\b.*\bchampion\b", done.stdout), done.stdout
    elif command == ["ledger"]:
        assert "No differentially private retrainings yet" in done.stdout
    else:
        assert "(local Prefect database)" in done.stdout and "UNRESOLVED" not in done.stdout


def test_a_temporary_prefect_api_slower_than_its_budget_says_so_while_waiting_and_keeps_its_log(tmp_path):
    """The wait shows progress, the refusal names the setting that gives it more time, and the log stays."""
    script = (
        "import flows.prefect_api as api\n"
        "api._PROGRESS_EVERY_S = 0.5\n"
        "try:\n"
        f"    with api.prefect_api(2.0, {str(tmp_path / 'logs')!r}, lambda line: print('PROGRESS', line)):\n"
        "        pass\n"
        "except api.PrefectApiUnavailable as error:\n"
        "    print('STOPPED', error)\n"
    )
    env = {**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, "PREFECT_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    lines = result.stdout.splitlines()
    assert sum(line.startswith("PROGRESS still starting the temporary Prefect API (") for line in lines) >= 2, lines
    [stopped] = [line for line in lines if line.startswith("STOPPED")]
    [log] = list((tmp_path / "logs").glob("prefect-api-*.log"))
    assert stopped == (
        f"STOPPED the temporary Prefect API did not answer in 2 s (FEDRISK_PREFECT_START_SECONDS; its log: {log})"
    )


def test_a_temporary_prefect_api_started_early_is_the_one_used_and_is_stopped_when_not_needed(tmp_path):
    """`retrain`, `demo` and `validate` start the API first, so that its start-up overlaps theirs
    (benchmarks/prefect_api_startup.py): the flows then use that one; a command that stops before (a bad config)
    stops it."""
    script = (
        "import os, flows.prefect_api as api\n"
        f"logs = {str(tmp_path / 'logs')!r}\n"
        "with api.starting_early(logs):\n"
        "    [(early, url, _)] = api._early\n"
        "    with api.prefect_api(300, logs) as used:\n"
        "        print('ADOPTED', used == url and not api._early)\n"
        "with api.starting_early(logs):\n"
        "    [(unused, _, _)] = api._early\n"
        "print('STOPPED', early.poll() is not None, unused.poll() is not None)\n"
    )
    env = {**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, "PREFECT_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.stdout.splitlines()[-2:] == ["ADOPTED True", "STOPPED True True"], result.stdout + result.stderr


def test_data_split_by_a_column_gives_one_institution_per_value(tmp_path, console):
    """A loan book split by state: one institution per value, named after it, the column dropped; the same
    command refuses a column that is not there, and --by with --institutions."""
    from contract.schema import load_schema

    schema = load_schema("credit_default")
    frame = pd.read_csv(synthesize(tmp_path / "source", n_institutions=1, seed=2, rows_scale=0.05)["alder_bank"])
    frame["STATE"] = np.where(np.arange(len(frame)) % 3 == 0, "New York", "CA")
    source = tmp_path / "book.csv"
    frame.to_csv(source, index=False)

    assert (
        _exit_code(
            data.split,
            input=source,
            schema="credit_default",
            out=tmp_path / "by_state",
            institutions=None,
            by="STATE",
            keep_column=False,
            seed=0,
        )
        == 0
    )
    parts = {path.stem: pd.read_csv(path) for path in (tmp_path / "by_state").glob("*.csv")}
    assert sorted(parts) == ["ca", "new_york"] and "STATE" not in parts["ca"].columns
    assert len(parts["new_york"]) == (frame["STATE"] == "New York").sum()
    assert sorted(pd.concat(parts.values())[schema.id]) == sorted(frame[schema.id])
    said = console()
    assert f"ca: {tmp_path / 'by_state' / 'ca.csv'}" in said and "new_york: " in said

    assert (
        _exit_code(
            data.split,
            input=source,
            schema="credit_default",
            out=tmp_path / "x",
            institutions=None,
            by="REGION",
            keep_column=False,
            seed=0,
        )
        == 1
    )
    assert f"{source}: no column 'REGION' to split by (columns: " in console()
    assert (
        _exit_code(
            data.split,
            input=source,
            schema="credit_default",
            out=tmp_path / "x",
            institutions="a,b",
            by="STATE",
            keep_column=False,
            seed=0,
        )
        == 2
    )
    assert (
        "give --institutions (equal, stratified parts) or --by COLUMN (one institution per value), not both"
        in console()
    )


def test_a_command_that_loaded_tensorflow_ends_with_its_last_line_keeping_its_exit_code_and_handlers(tmp_path):
    """`fedrisk` (flows.cli.run) once TensorFlow is loaded: the exit code and the last line as the command left
    them, the exit handlers run (a worker stopped by pid, logs flushed), an idle thread pool does not hold the exit
    (`fedrisk monitor` hung there), and no 5-10 s of Python tearing TensorFlow's C++ state down after the last
    line."""
    script = f"""
import atexit, sys
from concurrent.futures import ThreadPoolExecutor
import tensorflow  # as a retraining has it loaded by its end
atexit.register(lambda: open({str(tmp_path / "handler-ran")!r}, "w").close())
pool = ThreadPoolExecutor(1)  # kept, with an idle worker, as MLflow's artifact uploads keep theirs
pool.submit(int).result()
sys.argv = ["fedrisk", "validate", "--config", {str(tmp_path / "absent.yaml")!r}]
from flows.cli import run
run()
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"config file {tmp_path / 'absent.yaml'} not found" in done.stdout + done.stderr
    assert (tmp_path / "handler-ran").exists()


@pytest.mark.parametrize(
    ("config", "imported", "not_imported"),
    [
        ("demo.yaml", {"great_expectations", "fed_models.training", "tracking.plots"}, set()),
        ("uci_default_credit_xgboost.yaml", {"great_expectations", "fed_trees.training", "xgboost"}, {"tensorflow"}),
    ],
)
def test_a_retraining_command_imports_its_engine_ahead_and_a_tree_one_no_tensorflow(config, imported, not_imported):
    """What `retrain` and `demo` import while the Prefect API starts: validation's GX, the config's engine, the
    plots; a tree retraining never pays TensorFlow's import (seconds, and a gigabyte of memory)."""
    code = (
        "import sys; from flows.cli.runs import import_ahead; from flows.config import load_config; "
        "import_ahead(load_config(sys.argv[1])).join(); print(' '.join(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(PROJECT_ROOT / "configs" / config)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    modules = set(result.stdout.split())
    assert imported <= modules
    assert not (not_imported & modules)
