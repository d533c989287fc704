"""Federated MLP on the real UCI credit data: bank_a/b/c train, holdout.csv scores.

    uv run python benchmarks/federated_mlp_uci.py [--algorithm fedadam ...] [--json out.json]

Defaults are the best federated setting found: FedAdam (server lr 0.01), MLP(64, 32) with
dropout 0.3, one local epoch of SGD (lr 0.05, batch 64), early stopping with patience 10 on
the federated validation loss (10% of each bank), seeds 0, 1, 2.

Prints the federated model's holdout AUC and KS next to the same MLP trained centrally on
the pooled banks (what federation is compared with), and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flows  # noqa: E402,F401  (library defaults)
from tasks.data import read_institution, split_holdout  # noqa: E402
from tasks.evaluation import binary_metrics  # noqa: E402
from tasks.schema import FEATURE_COLUMNS, LABEL_COLUMN  # noqa: E402

UCI_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "uci_default_credit"
BANKS = ("bank_a", "bank_b", "bank_c")


def load_banks(data_dir: Path, validation_fraction: float, seed: int):
    """Each bank's (fit, validation) arrays and the external holdout."""
    fit, validation = [], []
    for bank in BANKS:
        frame = read_institution(bank, data_dir / f"{bank}.csv")
        train, val = split_holdout(frame, LABEL_COLUMN, fraction=validation_fraction, seed=seed, institution=bank)
        fit.append((bank, train[FEATURE_COLUMNS].to_numpy(np.float64), train[LABEL_COLUMN].to_numpy(np.float64)))
        validation.append((bank, val[FEATURE_COLUMNS].to_numpy(np.float64), val[LABEL_COLUMN].to_numpy(np.float64)))
    holdout = read_institution("holdout", data_dir / "holdout.csv")
    return fit, validation, (holdout[FEATURE_COLUMNS].to_numpy(np.float64), holdout[LABEL_COLUMN].to_numpy(np.float64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=UCI_DIR)
    parser.add_argument("--algorithm", default="fedadam")
    parser.add_argument("--hidden", default="64,32")
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--client-lr", type=float, default=0.05)
    parser.add_argument("--server-lr", type=float, default=0.01)
    parser.add_argument("--proximal-strength", type=float, default=0.0)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--aggregation", default="robust")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--no-centralized", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        sys.exit(f"UCI data not found at {args.data_dir}; see ../shared/data/README.md")

    from fed_models.centralized import train_centralized
    from fed_models.keras_models import ModelSpec, build_model, predict_proba
    from fed_models.training import ClientData, TrainingSpec, train
    from tasks.data import combine_statistics, local_statistics

    hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    kind = "mlp" if hidden else "logistic_regression"
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        fit, validation, (x_test, y_test) = load_banks(args.data_dir, 0.1, seed)
        mean, std = combine_statistics([local_statistics(bank, x, y) for bank, x, y in fit])
        model_spec = ModelSpec(kind, hidden, args.dropout, seed=seed)
        spec = TrainingSpec(
            model=model_spec, algorithm=args.algorithm, rounds=args.rounds, local_epochs=args.local_epochs,
            batch_size=args.batch_size, client_learning_rate=args.client_lr, server_learning_rate=args.server_lr,
            proximal_strength=args.proximal_strength, aggregation=args.aggregation, patience=args.patience,
            seed=seed,
        )
        started = time.perf_counter()

        def progress(m) -> None:
            print(f"  round {m.round}: train loss {m.loss:.4f}, validation loss {m.validation_loss:.4f}, "
                  f"validation AUC {m.validation_auc:.4f}", file=sys.stderr, flush=True)

        result = train([ClientData(*f) for f in fit], mean, std, spec,
                       validation=[ClientData(*v) for v in validation], on_round=progress)
        seconds = time.perf_counter() - started
        model = build_model(model_spec, mean, std)
        model.set_weights(result.weights)
        federated = binary_metrics(y_test, predict_proba(model, x_test))
        row = {"seed": seed, "algorithm": args.algorithm, "model": f"{kind}{list(hidden) or ''}",
               "dropout": args.dropout, "rounds_run": len(result.rounds), "best_round": result.best_round,
               "seconds": round(seconds, 1), "federated_auc": federated["roc_auc"], "federated_ks": federated["ks"]}
        if not args.no_centralized:
            central = build_model(model_spec, mean, std)
            central.set_weights(train_centralized(
                np.concatenate([f[1] for f in fit]), np.concatenate([f[2] for f in fit]),
                np.concatenate([v[1] for v in validation]), np.concatenate([v[2] for v in validation]),
                mean, std, model_spec, max_epochs=200, patience=5, batch_size=args.batch_size, learning_rate=1e-3))
            pooled = binary_metrics(y_test, predict_proba(central, x_test))
            row.update(centralized_auc=pooled["roc_auc"], centralized_ks=pooled["ks"])
        results.append(row)
        print(json.dumps(row), flush=True)

    aucs = [r["federated_auc"] for r in results]
    print(f"\nfederated {args.algorithm} {results[0]['model']}: holdout AUC mean {np.mean(aucs):.4f} "
          f"(std {np.std(aucs):.4f}, {len(aucs)} seeds)")
    if not args.no_centralized:
        central = [r["centralized_auc"] for r in results]
        print(f"centralized same model:       holdout AUC mean {np.mean(central):.4f} (std {np.std(central):.4f})")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
