"""Benchmark scripts run from a clean checkout and print their figures (tiny sizes here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_uci

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_federated_mlp_uci_prints_and_writes_its_figures(tmp_path):
    require_uci()
    out = _run("federated_mlp_uci.py", "--rounds", "2", "--seeds", "0", "--no-centralized",
               "--json", str(tmp_path / "mlp.json"))
    assert "federated fedadam mlp[64, 32]: holdout AUC mean 0." in out
    [run] = json.loads((tmp_path / "mlp.json").read_text())["runs"]
    assert run["rounds_run"] == 2 and 0.6 < run["federated_auc"] < 1


def test_faulty_institution_uci_shows_each_aggregator_under_each_fault(tmp_path):
    require_uci()
    out = _run("faulty_institution_uci.py", "--rounds", "2", "--faults", "x100",
               "--json", str(tmp_path / "faults.json"))
    figures = json.loads((tmp_path / "faults.json").read_text())
    assert set(figures) == {f"{a} / {f}" for a in ("robust", "tff_robust", "plain") for f in ("clean", "x100")}
    assert all(0.5 < auc < 1 for auc in figures.values())
    assert "faulty institution: bank_b; 2 rounds" in out
