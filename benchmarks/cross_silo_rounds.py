"""Seconds per federated round through institution nodes on loopback against simulation mode.

    uv run python benchmarks/cross_silo_rounds.py [--rows 8000,100000] [--rounds 5]

Three synthetic credit-default institutions of `rows` each; an MLP(64, 32), FedAvg, one local epoch at
batch 64. Simulation: one process trains every institution's client work in turn. Cross-silo: three
`fedrisk node serve` processes (mutual TLS on loopback, each with only its own extract), the coordinator
aggregating; the nodes train in parallel and each reads its own rows once (simulation hands TFF every
institution's dataset each round). The median of `rounds` rounds after a warm-up round; the nodes' start
(TensorFlow import) and the preparation of the training are reported apart.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import write_json

from contract.data import Split
from contract.synthetic import PORTFOLIOS, Portfolio, synthesize_institution
from engines.tff import federated_training
from flows.config import parse_config
from flows.cross_silo_demo import nodes_for
from flows.validate import consortium_of
from institution.statistics import feature_space

TRAINING = {"algorithm": "fedavg", "rounds": 6, "model": {"kind": "mlp", "hidden_units": [64, 32]}}


class _Console:
    def print(self, *args, **kwargs) -> None:
        print(*args, flush=True)


def consortium(directory: Path, rows: int) -> dict[str, Path]:
    paths = {}
    for index, base in enumerate(PORTFOLIOS[:3]):
        portfolio = Portfolio(
            base.name, rows, base.default_rate, base.median_limit, base.age_mean, base.education_mix, base.risk_shift
        )
        path = directory / base.name / "credit.csv"
        path.parent.mkdir(parents=True)
        synthesize_institution(portfolio, seed=index, first_id=1 + index * rows).to_csv(path, index=False)
        paths[base.name] = path
    return paths


def seconds_per_round(config, rounds: int) -> dict:
    consortium_ = consortium_of(config)
    schema, features = config.data_schema, config.feature_names
    split = Split(config.holdout_fraction, config.training.validation_fraction, config.seed)
    reports = [
        consortium_.validate(name, schema, None, Path(__file__).resolve().parents[1] / "expectations")
        for name in consortium_.names
    ]
    admitted = consortium_.admit(reports)
    stats = [admitted.statistics(name, schema, features, split) for name in admitted.names]
    space = feature_space(schema, features, split, stats)
    stamps = [time.perf_counter()]
    with tempfile.TemporaryDirectory() as work:
        federated_training(
            admitted,
            space,
            config.training,
            1.0,
            Path(work) / "model",
            on_round=lambda _: stamps.append(time.perf_counter()),
            run_key=f"benchmark-{time.time_ns()}",
        )
    per_round = [b - a for a, b in zip(stamps[1:], stamps[2:])]
    return {
        "first_round_seconds": stamps[1] - stamps[0],
        "seconds_per_round": statistics.median(per_round),
        "rounds": per_round,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="8000,100000", help="rows per institution")
    parser.add_argument("--rounds", type=int, default=5, help="rounds measured after the warm-up round")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/cross_silo_rounds.json")
    args = parser.parse_args()
    results = []
    print(
        f"{'rows each':>10} {'simulation s/round':>19} {'cross-silo s/round':>19} {'ratio':>6} "
        f"{'nodes start s':>14} {'first round s (sim / nodes)':>28}"
    )
    for rows in [int(r) for r in args.rows.split(",")]:
        with tempfile.TemporaryDirectory() as work:
            paths = consortium(Path(work) / "data", rows)
            config = parse_config(
                {
                    "model_name": "benchmark",
                    "quorum": 3,
                    "institutions": [{"name": n, "path": str(p)} for n, p in paths.items()],
                    "training": {**TRAINING, "rounds": args.rounds + 1},
                },
                Path(work),
            )
            simulation = seconds_per_round(config, args.rounds)
            started = time.perf_counter()
            with nodes_for(config, Path(work) / "nodes", _Console()) as coordinator:
                start = time.perf_counter() - started
                cross_silo = seconds_per_round(coordinator, args.rounds)
        row = {
            "rows_per_institution": rows,
            "simulation": simulation,
            "cross_silo": cross_silo,
            "ratio": cross_silo["seconds_per_round"] / simulation["seconds_per_round"],
            "nodes_start_seconds": start,
        }
        results.append(row)
        print(
            f"{rows:>10} {simulation['seconds_per_round']:>19.3f} {cross_silo['seconds_per_round']:>19.3f} "
            f"{row['ratio']:>6.2f} {start:>14.1f} {simulation['first_round_seconds']:>13.1f} / "
            f"{cross_silo['first_round_seconds']:.1f}",
            flush=True,
        )
    for row in results:
        if row["rows_per_institution"] == 8000:
            print(
                f"target (cross-silo <= 1.5x simulation at 3 x 8,000 rows on loopback): {row['ratio']:.2f}x -> "
                f"{'met' if row['ratio'] <= 1.5 else 'MISSED'}"
            )
    print(f"wrote {write_json(args.json, 'cross_silo_rounds', args, results)}")


if __name__ == "__main__":
    main()
