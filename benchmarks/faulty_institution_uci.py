"""One faulty bank among the real UCI banks: robust aggregation against plain averaging.

    uv run python benchmarks/faulty_institution_uci.py [--faulty bank_b] [--rounds 20] [--json out.json]

bank_a/b/c train a federated logistic regression (FedAvg); one bank's update is multiplied by
x100, -1 (sign flip), x-10 or NaN every round. Prints holdout.csv AUC per fault for fedrisk's
robust aggregator (the default), TFF's robust_aggregator as shipped, and plain weighted
averaging, next to the clean run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import UCI_DIR, arrays, partition_uci, require_uci, split_institutions, standardize, write_json

from institution.evaluation import binary_metrics

FAULTS = {"clean": None, "x100": 100.0, "sign flip": -1.0, "x-10": -10.0, "NaN": float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=UCI_DIR)
    parser.add_argument("--faulty", default="bank_b")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--faults", default=",".join(f for f in FAULTS if f != "clean"), help=f"comma-separated, of {list(FAULTS)[1:]}"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="default benchmarks/results/faulty_institution_uci.json"
    )
    args = parser.parse_args()
    require_uci(args.data_dir)

    from fed_models.keras_models import build_model, predict_proba
    from fed_models.training import ClientData, TrainingSpec, train

    frames, holdout = partition_uci(args.data_dir, "iid")
    banks = split_institutions(frames, 0.1, 0)
    x_test, y_test = arrays(holdout)
    mean, std = standardize(banks)
    clients = [ClientData(b.name, b.x_fit, b.y_fit) for b in banks]
    results = {}
    for aggregation in ("robust", "tff_robust", "plain"):
        spec = TrainingSpec(rounds=args.rounds, client_learning_rate=0.05, aggregation=aggregation, seed=0)
        for fault in ["clean", *args.faults.split(",")]:
            factor = FAULTS[fault]
            factors = None if factor is None else {args.faulty: factor}
            weights = train(clients, mean, std, spec, update_factors=factors).weights
            model = build_model(spec.model, mean, std)
            model.set_weights(weights)
            p = predict_proba(model, x_test)
            auc = binary_metrics(y_test, p)["roc_auc"] if np.all(np.isfinite(p)) else float("nan")
            results[f"{aggregation} / {fault}"] = auc
            print(f"{aggregation:>10}  {fault:>9}: holdout AUC {auc:.4f}", flush=True)
    print(
        f"\nfaulty institution: {args.faulty}; {args.rounds} rounds; AUC 0.5 under NaN = TFF's server rejected every "
        "non-finite average, so the model never moved"
    )
    print(f"wrote {write_json(args.json, 'faulty_institution_uci', args, results)}")


if __name__ == "__main__":
    main()
