"""Every benchmark script runs and prints and writes its figures (tiny sizes here).

The scripts that train run in this process, so the session's TensorFlow import and TFF worker are
reused; the pipeline benchmark runs as a user runs it, as its own process from the checkout.
"""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_uci

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"


def _run(script: str, *args: str, capsys, monkeypatch) -> str:
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    return capsys.readouterr().out


def _results(path: Path) -> object:
    written = json.loads(path.read_text())
    assert written["machine"]["cores"] == os.cpu_count() and written["command"].startswith("uv run python")
    return written["results"]


def test_utility_uci_compares_federated_with_centralized_local_only_and_boosting(tmp_path, capsys, monkeypatch):
    require_uci()
    out = _run(
        "utility_uci.py",
        "--partitions",
        "limit_band",
        "--seeds",
        "0",
        "--rounds",
        "2",
        "--algorithms",
        "fedavg",
        "--central-epochs",
        "2",
        "--tree-rounds",
        "10",
        "--json",
        str(tmp_path / "u.json"),
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    rows = _results(tmp_path / "u.json")
    assert {(r["method"], r["model"]) for r in rows} == {
        (method, model)
        for method in ("federated fedavg", "centralized (pooled)", "local-only")
        for model in ("logistic_regression", "mlp[64, 32]")
    } | {("centralized", "gradient boosting")} | {
        (method, "xgboost (depth 4)") for method in ("federated xgboost", "centralized (pooled)", "local-only")
    }
    segments = {"consumer_lender", "retail_bank", "premier_bank", "private_bank"}
    for row in rows:
        assert set(row["segments"]) == segments and 0.5 < row["holdout"]["auc"] < 1 and 0 < row["holdout"]["ks"] < 1
    boosting = next(r for r in rows if r["model"] == "gradient boosting")
    assert boosting["holdout"]["auc"] > 0.75  # the reference figure: about 0.78
    assert "limit_band: AUC on each institution's own holdout customers" in out
    assert "target (federated MLP within 0.005 of the centralized MLP): federated fedavg" in out


def test_round_throughput_times_rounds_against_the_keras_floor(tmp_path, capsys, monkeypatch):
    out = _run(
        "round_throughput.py",
        "--institutions",
        "2",
        "--rows",
        "300",
        "--models",
        "logistic_regression",
        "--rounds",
        "1",
        "--json",
        str(tmp_path / "t.json"),
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    [row] = _results(tmp_path / "t.json")
    assert row["institutions"] == 2 and row["rows_per_institution"] == 300
    assert row["seconds_per_round"] > 0 and row["floor_seconds"] > 0
    assert row["ratio"] == pytest.approx(row["seconds_per_round"] / row["floor_seconds"])
    assert row["examples_per_second"] == pytest.approx(600 / row["seconds_per_round"])
    assert "logistic_regression" in out and "TFF/floor" in out


def test_memory_rounds_reads_this_process_and_the_tff_worker(tmp_path, capsys, monkeypatch):
    out = _run(
        "memory_rounds.py",
        "--rounds",
        "3",
        "--rows",
        "300",
        "--warmup",
        "1",
        "--json",
        str(tmp_path / "m.json"),
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    results = _results(tmp_path / "m.json")
    assert [s["round"] for s in results["samples"]] == [1, 2, 3]
    assert all(s["python_mib"] > 100 and s["worker_mib"] > 10 for s in results["samples"])  # both processes read
    assert results["peak"]["worker_mib"] >= max(s["worker_mib"] for s in results["samples"])
    assert "growth round 1 -> 3" in out


def test_faulty_institution_uci_shows_each_aggregator_under_each_fault(tmp_path, capsys, monkeypatch):
    require_uci()
    out = _run(
        "faulty_institution_uci.py",
        "--rounds",
        "2",
        "--faults",
        "x100",
        "--json",
        str(tmp_path / "f.json"),
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    figures = _results(tmp_path / "f.json")
    assert set(figures) == {f"{a} / {f}" for a in ("robust", "tff_robust", "plain") for f in ("clean", "x100")}
    assert all(0.5 < auc < 1 for auc in figures.values())
    assert "faulty institution: bank_b; 2 rounds" in out


def test_privacy_uci_sets_dp_utility_and_attack_advantage_against_no_dp(tmp_path, capsys, monkeypatch):
    require_uci()
    out = _run(
        "privacy_uci.py",
        "--seeds",
        "0",
        "--epsilons",
        "8",
        "--models",
        "logistic_regression",
        "--rounds",
        "2",
        "--attack-rows",
        "100",
        "--attack-rounds",
        "1",
        "--attack-epochs",
        "1",
        "--json",
        str(tmp_path / "d.json"),
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    rows = _results(tmp_path / "d.json")
    assert [(r["setting"], r["epsilon"]) for r in rows] == [
        ("utility", None),
        ("utility", 8.0),
        ("memorizing", None),
        ("memorizing", 8.0),
    ]
    for row in rows:
        assert 0 <= row["attack_advantage"] < 1 and 0 < row["holdout_auc"] < 1
        if row["epsilon"]:
            assert all(7.9 < e <= 8.0 for e in row["epsilon_spent"].values())
    assert rows[1]["holdout_auc"] > 0.65  # a private scorecard after 2 rounds
    assert "memorizing  mlp[64, 64]" in out


@pytest.mark.slow
def test_pipeline_overhead_splits_a_real_demo_run_into_stages(demo_in_terminal, capsys, monkeypatch):
    """The benchmark's split of `fedrisk demo` exactly as a user first runs it (the terminal test's run: its own
    process, a temporary Prefect API, the demo's data synthesized), from Prefect's record of it; the imports timed
    in fresh interpreters; the table it prints. (Its loop only starts such runs and times them.)"""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    benchmark = runpy.run_path(str(BENCHMARKS / "pipeline_overhead.py"))
    demo = demo_in_terminal
    # Read in an interpreter of its own, as the benchmark reads it: in this worker Prefect's client would reach
    # the session's API (another database) whatever the settings say.
    read = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; from pathlib import Path; from pipeline_overhead import stage_seconds; "
            "print(json.dumps(stage_seconds(Path(sys.argv[1]))))",
            str(demo.root / "prefect"),
        ],
        cwd=BENCHMARKS,
        env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert read.returncode == 0, read.stdout + read.stderr
    runs = benchmark["split"]([(demo.started, demo.finished)], json.loads(read.stdout.strip().splitlines()[-1]))
    imports = benchmark["import_seconds"](dict(os.environ))
    benchmark["report"](imports, runs)
    results = {"imports": imports, "runs": runs}
    [run] = results["runs"]
    stages = run["stages"]
    for stage in (
        "start-up",
        "validation",
        "statistics",
        "training",
        "baselines (simulation)",
        "evaluation",
        "registration",
    ):
        assert stages[stage] > 0, stage
    assert sum(stages.values()) == pytest.approx(run["wall_seconds"])
    assert stages["training"] > stages["statistics"]
    assert set(results["imports"]) == {
        "fedrisk CLI and flow (Prefect, MLflow client, GX, pandas)",
        "TensorFlow + TFF (paid once, inside training)",
    }
    assert "total (wall)" in capsys.readouterr().out


def test_worker_isolation_measures_the_library_and_rounds_with_and_without_it(tmp_path, capsys, monkeypatch):
    if subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"], capture_output=True).returncode:
        pytest.skip("unprivileged user and network namespaces are not available here (unshare -rn)")
    out = _run(
        "worker_isolation.py",
        "--institutions",
        "2",
        "--rows",
        "300",
        "--rounds",
        "1",
        "--repeats",
        "1",
        "--json",
        str(tmp_path / "w.json"),
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    [row] = _results(tmp_path / "w.json")["rounds"]
    assert row["same_weights"] and row["isolated_seconds_per_round"] > 0 and row["bare_seconds_per_round"] > 0
    assert "found cached in" in out and "same weights" in out


@pytest.mark.slow
def test_use_cases_compares_federated_with_pooled_on_real_data(tmp_path, capsys, monkeypatch):
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "ulb_fraud_subset").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (../shared/data is absent)")
    out = _run(
        "use_cases.py",
        "--cases",
        "card_fraud",
        "--seeds",
        "0",
        "--json",
        str(tmp_path / "c.json"),
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    [run] = _results(tmp_path / "c.json")["card_fraud"]["runs"]
    assert run["federated"]["pr_auc"] > 0.85 and run["pooled"]["pr_auc"] > 0.85
    assert run["xgboost_federated"]["pr_auc"] > 0.85 and run["xgboost_pooled"]["pr_auc"] > 0.85
    assert "card_fraud: pr_auc federated" in out and "sklearn_boosting" in out and "xgboost_federated" in out


@pytest.mark.slow
def test_cross_silo_rounds_times_rounds_through_node_processes(tmp_path, capsys, monkeypatch):
    out = _run(
        "cross_silo_rounds.py",
        "--rows",
        "400",
        "--rounds",
        "1",
        "--json",
        str(tmp_path / "x.json"),
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    [row] = _results(tmp_path / "x.json")
    assert row["simulation"]["seconds_per_round"] > 0 and row["cross_silo"]["seconds_per_round"] > 0
    assert "Starting 3 institution nodes" in out


@pytest.mark.slow
def test_stragglers_times_each_schedule_with_a_slowed_node(tmp_path, capsys, monkeypatch):
    require_uci()
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from stragglers import slowing_possible

    if not slowing_possible():
        pytest.skip("the benchmark slows a node with a cgroup CPU limit: this machine gives no writable cgroup")
    out = _run(
        "stragglers.py",
        "--rounds",
        "2",
        "--cpu",
        "0.5",  # the script's default of a tenth of a core makes the slowed node's start take minutes on CI
        "--target",
        "0.5",
        "--json",
        str(tmp_path / "s.json"),
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    rows = _results(tmp_path / "s.json")
    assert [r["mode"] for r in rows] == ["synchronous", "deadline", "buffered"]
    assert all(1 <= r["rounds"] <= 2 and r["seconds_to_target"] is not None and r["final_auc"] > 0.5 for r in rows)
    assert "bank_c's node limited to 0.5 of a core" in out and "target (>= 1.7x faster to 0.5" in out


def test_consortium_scale_times_rounds_through_node_processes_against_the_floor(tmp_path, capsys, monkeypatch):
    out = _run(
        "consortium_scale.py",
        "--institutions",
        "3",
        "--engines",
        "xgboost",
        "--rows",
        "600",
        "--tree-rounds",
        "4",
        "--json",
        str(tmp_path / "c.json"),
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    [row] = _results(tmp_path / "c.json")
    assert row["institutions"] == 3 and row["node_processes"] == 3 and row["rounds_shown"] == 4
    assert row["seconds_per_round"] > 0 and row["floor_seconds_per_round"] > 0
    assert row["node_children"] == [] and 0 < row["node_proportional_mib_mean"] < row["node_peak_mib_mean"]
    assert "target (xgboost at 3 institutions <= 1.15x the floor)" in out


@pytest.mark.usefixtures("prefect_api")
def test_tuning_uci_compares_the_shipped_settings_with_tuned_ones(tmp_path, capsys, monkeypatch):
    require_uci()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///unused.db")  # the script sets its own; restored after
    monkeypatch.setenv("FEDRISK_RUNS_DIR", str(tmp_path / "runs"))
    out = _run(
        "tuning_uci.py",
        "--trials",
        "2",
        "--seeds",
        "0",
        "--rounds",
        "8",
        "--json",
        str(tmp_path / "t.json"),
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    [row] = _results(tmp_path / "t.json")
    assert row["tuned"]["trials"] == "2 of 2 (0 pruned)" and 0.6 < row["tuned"]["federated"] < 1
    assert row["tuned"]["metric"] == "roc_auc" and 0.6 < row["shipped"]["pooled"] < 1
    assert "target (tuned >= 0.787 pooled reference)" in out


def test_node_scale_runs_each_node_stage_in_a_fresh_process(tmp_path, capsys, monkeypatch):
    out = _run(
        "node_scale.py",
        "--rows",
        "3000",
        "--stages",
        "statistics,trees_round",
        "--json",
        str(tmp_path / "n.json"),
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    rows = _results(tmp_path / "n.json")
    assert [r["stage"] for r in rows] == ["statistics", "trees_round"]
    assert all(r["exit"] == 0 and r["peak_rss_mib"] > 50 and r["rows"] == 3000 for r in rows), rows
    assert rows[0]["output"].endswith(str(round(3000 * 0.8)))  # the training rows counted: all but the holdout
    assert "target (each stage under 3 GB at 3,000 rows)" in out


def test_secure_aggregation_times_rounds_in_the_clear_and_as_secure_sums(tmp_path, capsys, monkeypatch):
    out = _run(
        "secure_aggregation.py",
        "--nodes",
        "3",
        "--rows",
        "500",
        "--rounds",
        "2",
        "--json",
        str(tmp_path / "s.json"),
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    [row] = _results(tmp_path / "s.json")["rounds"]
    assert row["nodes"] == 3 and row["secure"]["bytes_per_round"] > row["plain"]["bytes_per_round"] > 0
    assert row["bytes_ratio"] > 1 and row["time_ratio"] > 0
    assert "target (at most 1.3x the time per round at 3 nodes)" in out
