"""How long a federated round takes, against the compute floor of the same local training.

    uv run python benchmarks/round_throughput.py [--institutions 3,10,30] [--rows 1000,10000,100000]
                                                 [--models logistic_regression,mlp] [--json out.json]

For each number of institutions and rows per institution: seconds per TFF round (FedAvg, one local
epoch of SGD at batch 64, robust aggregation; the median of the measured rounds after one warm-up
round) and examples per second. The compute floor is plain Keras running the same local epoch over
each institution's rows one institution after another (compiled once, warmed up, best of
steps_per_execution 1 and 64); the ratio TFF / floor is the price of federation's machinery.
Rows are random (23 standard-normal features, a logistic label): time does not depend on values.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from common import write_json

N_FEATURES = 23
MODELS = {"logistic_regression": (), "mlp": (64, 32)}


def consortium(n_institutions: int, rows: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    coefficients = rng.normal(size=N_FEATURES)
    found = []
    for _ in range(n_institutions):
        x = rng.normal(size=(rows, N_FEATURES))
        y = (rng.random(rows) < 1 / (1 + np.exp(-(x @ coefficients) / 3))).astype(np.float64)
        found.append((x, y))
    return found


def federated_round_seconds(data, spec, rounds: int) -> list[float]:
    """Wall seconds of each TFF round (datasets built, trained, aggregated, applied)."""
    from fed_models.training import ClientData, train

    stamps = [time.perf_counter()]
    train(
        [ClientData(f"institution_{i}", x, y) for i, (x, y) in enumerate(data)],
        np.zeros(N_FEATURES),
        np.ones(N_FEATURES),
        spec,
        on_round=lambda _: stamps.append(time.perf_counter()),
    )
    return list(np.diff(stamps))


def keras_floor_seconds(data, spec, repeats: int) -> tuple[float, int]:
    """Seconds for plain Keras to run the same local epochs over each institution in turn (best setting)."""
    import tensorflow as tf

    from fed_models.keras_models import WeightedBinaryCrossentropy, build_model

    best = (float("inf"), 0)
    for steps_per_execution in (1, 64):
        features = data[0][0].shape[1]
        model = build_model(spec.model, np.zeros(features), np.ones(features))
        model.compile(
            optimizer=tf.keras.optimizers.SGD(spec.client_learning_rate),
            loss=WeightedBinaryCrossentropy(),
            steps_per_execution=steps_per_execution,
        )
        model.fit(
            data[0][0][: spec.batch_size * 4], data[0][1][: spec.batch_size * 4], batch_size=spec.batch_size, verbose=0
        )  # compile and trace once
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            for x, y in data:
                model.fit(
                    x.astype(np.float32),
                    y.astype(np.float32),
                    batch_size=spec.batch_size,
                    epochs=spec.local_epochs,
                    shuffle=True,
                    verbose=0,
                )
            times.append(time.perf_counter() - started)
        best = min(best, (statistics.median(times), steps_per_execution))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--institutions", default="3,10,30")
    parser.add_argument("--rows", default="1000,10000,100000", help="rows per institution")
    parser.add_argument("--models", default="logistic_regression,mlp", help=f"of {list(MODELS)} (mlp is 64, 32)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds measured after the warm-up round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/round_throughput.json")
    args = parser.parse_args()

    from fed_models.keras_models import ModelSpec
    from fed_models.training import TrainingSpec

    results = []
    print(
        f"{'model':<20} {'institutions':>12} {'rows each':>10} {'s/round':>9} {'examples/s':>11} "
        f"{'floor s':>9} {'TFF/floor':>9}"
    )
    for kind in args.models.split(","):
        model = ModelSpec(kind, MODELS[kind], 0.0)
        for n in [int(v) for v in args.institutions.split(",")]:
            for rows in [int(v) for v in args.rows.split(",")]:
                data = consortium(n, rows)
                spec = TrainingSpec(model=model, rounds=args.rounds + 1, batch_size=args.batch_size, seed=0)
                rounds = federated_round_seconds(data, spec, args.rounds + 1)
                per_round = statistics.median(rounds[1:])
                floor, steps_per_execution = keras_floor_seconds(data, spec, repeats=max(1, min(args.rounds, 3)))
                row = {
                    "model": kind,
                    "institutions": n,
                    "rows_per_institution": rows,
                    "seconds_per_round": per_round,
                    "first_round_seconds": rounds[0],
                    "examples_per_second": n * rows / per_round,
                    "floor_seconds": floor,
                    "floor_steps_per_execution": steps_per_execution,
                    "ratio": per_round / floor,
                }
                results.append(row)
                print(
                    f"{kind:<20} {n:>12} {rows:>10} {per_round:>9.3f} {row['examples_per_second']:>11,.0f} "
                    f"{floor:>9.3f} {row['ratio']:>9.2f}",
                    flush=True,
                )
    target = [r for r in results if r["institutions"] == 10 and r["rows_per_institution"] == 10_000]
    for r in target:
        print(
            f"target (TFF round <= 1.5x the floor at 10 institutions x 10k rows), {r['model']}: "
            f"{r['ratio']:.2f}x -> {'met' if r['ratio'] <= 1.5 else 'MISSED'}"
        )
    print(f"wrote {write_json(args.json, 'round_throughput', args, results)}")


if __name__ == "__main__":
    main()
