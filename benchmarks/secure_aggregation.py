"""What secure aggregation costs per round, and what it changes in the model.

    uv run python benchmarks/secure_aggregation.py [--nodes 3,10] [--rows 8000] [--rounds 20] [--uci]

Rounds: `nodes` synthetic credit-default institutions of `rows` each, each at a `fedrisk node serve` process
on loopback (mutual TLS); an MLP(64, 32), FedAvg, one local epoch at batch 64. The same training in the clear
(robust aggregation at the coordinator) and under secure aggregation (per round: a secure sum of the clipped
updates and training metrics, and one of the validation metrics, five phases each: keys, shares, masked inputs,
the consistency round and unmasking): the median seconds of
`rounds` rounds after a warm-up round, and the bytes that cross between coordinator and nodes per round.

`--uci`: the UCI banks (../shared/data) at three nodes, trained as configs/uci_default_credit.yaml (FedAdam
MLP, early stopping) with and without secure aggregation; holdout.csv AUC of both.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import ROOT, UCI_DIR, require_uci, synthetic_institutions, write_json

import consortium.nodes as client
from contract.data import Split
from engines.tff import federated_training
from flows.config import load_config, parse_config
from flows.cross_silo_demo import nodes_for
from flows.validate import consortium_of
from institution.evaluation import binary_metrics
from institution.statistics import feature_space
from node import wire
from riskmodel import model as exported

TRAINING = {"algorithm": "fedavg", "model": {"kind": "mlp", "hidden_units": [64, 32]}}


class _Console:
    def print(self, *args, **kwargs) -> None:
        print(*args, flush=True)


class _Bytes:
    """Bytes of every request and answer between coordinator and nodes while counting, and each operation's
    seconds (a call's round trip, node work included)."""

    total = 0
    counting = False
    seconds: dict[str, list[float]] = {}
    real_call = client.call

    @classmethod
    def call(cls, handle, tls, request):
        started = time.perf_counter()
        answer = cls.real_call(handle, tls, request)
        if cls.counting:
            cls.seconds.setdefault(request.operation, []).append(time.perf_counter() - started)
            cls.total += len(wire.encode(request)) + len(wire.encode(answer))
        return answer


client.call = _Bytes.call


def train(config, work: Path, secure: bool, on_round=None):
    """Validation, statistics (a secure sum when `secure`) and the training through the nodes of `config`."""
    if secure:
        config = type(config).model_validate({**config.plain(), "tls": config.tls, "secure_aggregation": True})
    nodes = consortium_of(config)
    schema, features = config.data_schema, config.feature_names
    split = Split(config.holdout_fraction, config.training.validation_fraction, config.seed)
    reports = [nodes.validate(name, schema, None, ROOT / "expectations") for name in nodes.names]
    admitted = nodes.admit(reports)
    if secure:
        stats = [admitted.secure_statistics(schema, features, split)[0]]
    else:
        stats = [admitted.statistics(name, schema, features, split) for name in admitted.names]
    return federated_training(
        admitted,
        feature_space(schema, features, split, stats),
        config.training,
        1.0,
        work / ("secure" if secure else "plain"),
        on_round=on_round,
        run_key=f"benchmark-{time.time_ns()}",
    )


def rounds_cost(config, work: Path, secure: bool) -> dict:
    stamps, sizes = [], []

    def on_round(_) -> None:
        stamps.append(time.perf_counter())
        sizes.append(_Bytes.total)

    _Bytes.total, _Bytes.counting, _Bytes.seconds = 0, True, {}
    try:
        train(config, work, secure, on_round)
    finally:
        _Bytes.counting = False
    per_round = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    per_round_bytes = [b - a for a, b in zip(sizes[:-1], sizes[1:])]
    calls = {op: round(statistics.median(times) * 1000, 1) for op, times in _Bytes.seconds.items()}
    print(f"    {'secure' if secure else 'in the clear'}: median ms per call {calls}", flush=True)
    return {
        "seconds_per_round": statistics.median(per_round),
        "rounds": per_round,
        "bytes_per_round": statistics.median(per_round_bytes),
        "median_call_ms": calls,
    }


def uci(args) -> dict:
    require_uci(args.data_dir)
    config = load_config(ROOT / "configs" / "uci_default_credit.yaml")
    config = type(config).model_validate(
        {
            **config.plain(),
            "baselines": {"enabled": False},
            "institutions": [
                {"name": n, "path": str(args.data_dir / f"{n}.csv")} for n in ("bank_a", "bank_b", "bank_c")
            ],
        }
    )
    holdout = pd.read_csv(args.data_dir / "holdout.csv")
    y = holdout[config.data_schema.label.column].to_numpy()
    found = {}
    with tempfile.TemporaryDirectory() as work, nodes_for(config, Path(work) / "nodes", _Console()) as coordinator:
        for secure in (False, True):
            started = time.perf_counter()
            outcome = train(coordinator, Path(work), secure)
            model = exported.load(Path(outcome.model_path))
            auc = binary_metrics(y, model.predict_proba(holdout))["roc_auc"]
            key = "secure" if secure else "plain"
            found[key] = {
                "holdout_auc": auc,
                "rounds": len(outcome.rounds),
                "best_round": outcome.best_round,
                "seconds": time.perf_counter() - started,
            }
            print(
                f"UCI banks, 3 nodes, {key:>6}: holdout.csv AUC {auc:.4f} ({len(outcome.rounds)} rounds, best "
                f"{outcome.best_round}, {found[key]['seconds']:.0f} s)",
                flush=True,
            )
    gap = found["secure"]["holdout_auc"] - found["plain"]["holdout_auc"]
    print(
        f"target (secure within 0.002 holdout AUC of the same run without it): {gap:+.4f} -> "
        f"{'met' if abs(gap) <= 0.002 else 'MISSED'}"
    )
    return {**found, "gap": gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="3,10", help="institutions (one node process each)")
    parser.add_argument("--rows", type=int, default=8000, help="rows per institution")
    parser.add_argument("--rounds", type=int, default=20, help="rounds measured after the warm-up round")
    parser.add_argument("--uci", action="store_true", help="also train the UCI banks with and without it")
    parser.add_argument("--data-dir", type=Path, default=UCI_DIR)
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/secure_aggregation.json")
    args = parser.parse_args()
    results = {"rounds": []}
    for count in [int(n) for n in args.nodes.split(",") if n]:
        with tempfile.TemporaryDirectory() as work:
            paths = synthetic_institutions(Path(work) / "data", count, args.rows)
            config = parse_config(
                {
                    "model_name": "benchmark",
                    "quorum": count,
                    "institutions": [{"name": n, "path": str(p)} for n, p in paths.items()],
                    "training": {**TRAINING, "rounds": args.rounds + 1},
                },
                Path(work),
            )
            with nodes_for(config, Path(work) / "nodes", _Console()) as coordinator:
                plain = rounds_cost(coordinator, Path(work), secure=False)
                secure = rounds_cost(coordinator, Path(work), secure=True)
        row = {
            "nodes": count,
            "rows_per_institution": args.rows,
            "plain": plain,
            "secure": secure,
            "time_ratio": secure["seconds_per_round"] / plain["seconds_per_round"],
            "bytes_ratio": secure["bytes_per_round"] / plain["bytes_per_round"],
        }
        results["rounds"].append(row)
        print(
            f"{count:>3} nodes: {plain['seconds_per_round']:.3f} s/round in the clear, "
            f"{secure['seconds_per_round']:.3f} s secure ({row['time_ratio'] - 1:+.1%}); "
            f"{plain['bytes_per_round'] / 1e6:.2f} MB/round in the clear, {secure['bytes_per_round'] / 1e6:.2f} MB "
            f"secure ({row['bytes_ratio']:.2f}x)",
            flush=True,
        )
    for row in results["rounds"]:
        if row["nodes"] == 3:
            print(
                f"target (at most 1.3x the time per round at 3 nodes): {row['time_ratio']:.2f}x -> "
                f"{'met' if row['time_ratio'] <= 1.3 else 'MISSED'}"
            )
    if args.uci:
        results["uci"] = uci(args)
    print(f"wrote {write_json(args.json, 'secure_aggregation', args, results)}")


if __name__ == "__main__":
    main()
