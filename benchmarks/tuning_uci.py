"""Federated tuning on the real UCI banks: the tuned model's weighted holdout AUC against the shipped settings'.

    uv run python benchmarks/tuning_uci.py [--config configs/uci_default_credit_xgboost.yaml] [--trials 12]
                                           [--seeds 0,1,2] [--target 0.787] [--rounds N]

For each seed, two retrainings through the product's flow (a temporary Prefect API, an MLflow store of the
benchmark's own): the config as shipped, then the same config with `tuning: {trials: N}` (the engine's default
search space, median pruning), both with simulation baselines. Reports each one's weighted holdout AUC (each bank's
own 20 % holdout, weighted by its rows: what the promotion policy compares) and the pooled-rows baseline's (the same
engine and settings on every bank's training rows in one place, scored on the same holdouts), the tuned run's trials
(pruned ones), its wall time and the best settings. The target is the pooled reference on these banks (0.787,
centralized gradient boosting on the pooled rows, BENCHMARKS.md "Utility"). Without differential privacy: no privacy
budget is spent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, UCI_DIR, require_uci, write_json


def retrained(config_path: Path, seed: int, tuning: dict | None, rounds: int | None = None) -> dict:
    from flows.config import load_config
    from flows.retrain import retrain
    from institution.evaluation import weighted_metrics

    overrides = {
        "seed": seed,
        "baselines.enabled": True,  # the same model on the pooled rows, scored on the same holdouts
        **({"tuning": tuning} if tuning else {}),
        **({"training.rounds": rounds} if rounds else {}),
    }
    config = load_config(config_path, overrides)
    started = time.perf_counter()
    summary = retrain(config)
    seconds = time.perf_counter() - started
    pooled = weighted_metrics(summary.evaluations, "pooled")["roc_auc"]
    row = {"seed": seed, "weighted_auc": summary.weighted["roc_auc"], "pooled_auc": pooled, "seconds": seconds}
    if tuning:
        from mlflow import MlflowClient

        tags = MlflowClient().get_run(summary.registration.run_id).data.tags
        row |= {
            "trials": tags["tuning.trials"],
            "best_trial": tags["tuning.best_trial"],
            "best_validation_auc": float(tags["tuning.best_validation_auc"]),
            "best": {k.removeprefix("tuning.best."): v for k, v in tags.items() if k.startswith("tuning.best.")},
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "uci_default_credit_xgboost.yaml")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--target", type=float, default=0.787)
    parser.add_argument("--rounds", type=int, default=None, help="cap the config's rounds (a quick check)")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/tuning_uci.json")
    args = parser.parse_args()
    require_uci(UCI_DIR)
    from flows.prefect_api import prefect_api

    results = []
    with tempfile.TemporaryDirectory() as store:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(store) / 'mlflow.db'}"
        os.environ["FEDRISK_RUNS_DIR"] = str(Path(store) / "runs")
        with prefect_api():
            for seed in [int(s) for s in args.seeds.split(",")]:
                shipped = retrained(args.config, seed, None, args.rounds)
                tuned = retrained(args.config, seed, {"trials": args.trials}, args.rounds)
                results.append({"seed": seed, "shipped": shipped, "tuned": tuned})
                print(
                    f"seed {seed}: shipped {shipped['weighted_auc']:.4f} (pooled {shipped['pooled_auc']:.4f}, "
                    f"{shipped['seconds']:.0f} s); tuned {tuned['weighted_auc']:.4f} (pooled "
                    f"{tuned['pooled_auc']:.4f}, {tuned['seconds']:.0f} s, trials {tuned['trials']}, best trial "
                    f"{tuned['best_trial']}: {tuned['best']})",
                    flush=True,
                )

    def mean(run: str, figure: str) -> float:
        return statistics.mean(r[run][figure] for r in results)

    print(
        f"weighted holdout AUC over {len(results)} seeds: federated shipped {mean('shipped', 'weighted_auc'):.4f}, "
        f"tuned {mean('tuned', 'weighted_auc'):.4f}; pooled rows, shipped settings {mean('shipped', 'pooled_auc'):.4f}"
        f", tuned settings {mean('tuned', 'pooled_auc'):.4f}"
    )
    tuned, reference = mean("tuned", "weighted_auc"), mean("shipped", "pooled_auc")
    print(
        f"target (tuned >= {args.target} pooled reference): {'met' if tuned >= args.target else 'MISSED'}; tuned "
        f"federated against pooled with the shipped settings on the same holdouts: {tuned - reference:+.4f}"
    )
    print(f"wrote {write_json(args.json, 'tuning_uci', args, results)}")


if __name__ == "__main__":
    main()
