"""Federated tuning on the real UCI banks: the tuned model's weighted holdout AUC against the shipped settings'.

    uv run python benchmarks/tuning_uci.py [--config configs/uci_default_credit_xgboost.yaml] [--trials 12]
                                           [--seeds 0,1,2] [--target 0.787] [--rounds N]

For each seed, two retrainings through the product's flow (a temporary Prefect API, an MLflow store of the
benchmark's own): the config as shipped, then the same config with `tuning: {trials: N}` (the engine's default
search space, median pruning). Reports each one's weighted holdout AUC (each bank's own 20 % holdout, weighted by
its rows: what the promotion policy compares), the tuned run's trials (pruned ones), its wall time and the best
settings. The target is the pooled reference on these banks (0.787, centralized gradient boosting on the pooled
rows, BENCHMARKS.md "Utility"). Without differential privacy: no privacy budget is spent.
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

    overrides = {
        "seed": seed,
        **({"tuning": tuning} if tuning else {}),
        **({"training.rounds": rounds} if rounds else {}),
    }
    config = load_config(config_path, overrides)
    started = time.perf_counter()
    summary = retrain(config)
    seconds = time.perf_counter() - started
    row = {"seed": seed, "weighted_auc": summary.weighted["roc_auc"], "seconds": seconds}
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
                    f"seed {seed}: shipped {shipped['weighted_auc']:.4f} ({shipped['seconds']:.0f} s); tuned "
                    f"{tuned['weighted_auc']:.4f} ({tuned['seconds']:.0f} s, trials {tuned['trials']}, best trial "
                    f"{tuned['best_trial']}: {tuned['best']})",
                    flush=True,
                )
    tuned_mean = statistics.mean(r["tuned"]["weighted_auc"] for r in results)
    shipped_mean = statistics.mean(r["shipped"]["weighted_auc"] for r in results)
    print(f"weighted holdout AUC over {len(results)} seeds: shipped {shipped_mean:.4f}, tuned {tuned_mean:.4f}")
    print(f"target (tuned >= {args.target} pooled reference): {'met' if tuned_mean >= args.target else 'MISSED'}")
    print(f"wrote {write_json(args.json, 'tuning_uci', args, results)}")


if __name__ == "__main__":
    main()
