"""Rounds at 3, 10 and 20 institutions through node processes: seconds per round against the compute floor, and
the coordinator's and the nodes' memory.

    uv run python benchmarks/consortium_scale.py [--institutions 3,10,20] [--engines xgboost,mlp] [--rows 5000]
                                                 [--rounds 8] [--tree-rounds 60]

N synthetic credit-default institutions of `rows` each (the demo's portfolios in turn, each its own seed), one
`fedrisk node serve` process each on loopback (mutual TLS), and the coordinator in this process: validation and
statistics through the nodes, then a training: `rounds` rounds of an MLP(64, 32) with FedAvg (one local epoch at
batch 64), or `tree-rounds` XGBoost trees of depth 4 (no early stopping). Seconds per round: the mean over the
rounds after the first (which builds TFF's computations or starts XGBoost's workers). The compute floor is the same
work without federation, on the same encoded rows in one process: plain Keras `fit` over each institution's fit rows
in turn (benchmarks/round_throughput.py's floor), or XGBoost grown on the pooled rows. Memory: this process's peak
(the coordinator), and each node's peak resident set with its children (TFF's worker) from /proc, and its
proportional set size at the end (shared library pages divided among the nodes that map them: what N nodes on one
machine cost together); a node for trees runs with a trees-only policy and loads no TensorFlow.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, synthetic_institutions, write_json
from round_throughput import keras_floor_seconds

from contract.data import Split
from engines.registry import engine_for
from flows.config import parse_config
from flows.cross_silo_demo import nodes_for
from flows.validate import consortium_of
from institution.statistics import feature_space

TRAININGS = {
    "mlp": {"algorithm": "fedavg", "model": {"kind": "mlp", "hidden_units": [64, 32]}},
    "xgboost": {"engine": "xgboost", "max_depth": 4, "learning_rate": 0.1, "early_stopping": None},
}


class _Console:
    def print(self, *args, **kwargs) -> None:
        print(*args, flush=True)


def admitted_space(config):
    """Validation and statistics (through the nodes for a coordinator's config): the admitted consortium, its
    feature space and positive-class weight."""
    consortium = consortium_of(config)
    schema, features = config.data_schema, config.feature_names
    split = Split(config.holdout_fraction, config.training.validation_fraction, config.seed)
    reports = [consortium.validate(name, schema, None, ROOT / "expectations") for name in consortium.names]
    admitted = consortium.admit(reports)
    stats = [admitted.statistics(name, schema, features, split) for name in admitted.names]
    space = feature_space(schema, features, split, stats)
    return admitted, space, space.positive_weight(config.training.positive_class_weight)


def trained_rounds(config, work: Path) -> dict:
    """One training through `config`'s consortium: seconds per round after the first, and the first's."""
    admitted, space, positive_weight = admitted_space(config)
    stamps = [time.perf_counter()]
    engine_for(config.training).train(
        admitted,
        space,
        config.training,
        positive_weight,
        work / "model",
        on_round=lambda _: stamps.append(time.perf_counter()),
        run_key=f"benchmark-{time.time_ns()}",
    )
    later = stamps[2:]
    return {
        "first_round_seconds": stamps[1] - stamps[0],
        "seconds_per_round": (later[-1] - stamps[1]) / len(later),
        "rounds_shown": len(stamps) - 1,
    }


def floor_seconds(config, kind: str) -> float:
    """The same rounds' compute without federation, per round, on the institutions' encoded rows in this process."""
    admitted, space, positive_weight = admitted_space(config)
    if kind == "xgboost":
        import numpy as np

        from engines.xgboost import tree_spec
        from fed_trees.training import train_centralized

        data = admitted.tree_data(space)
        spec = tree_spec(config.training, space, positive_weight)
        pooled = [np.concatenate([getattr(d, part) for d in data]) for part in ("x_fit", "y_fit")]
        validation = [np.concatenate([getattr(d, part) for d in data]) for part in ("x_validation", "y_validation")]
        with tempfile.TemporaryDirectory() as scratch:
            train_centralized(*pooled, *validation, spec, Path(scratch) / "warm.json")  # load and warm up once
            started = time.perf_counter()
            train_centralized(*pooled, *validation, spec, Path(scratch) / "floor.json")
            return (time.perf_counter() - started) / spec.rounds
    from engines.tff import training_spec

    spec = training_spec(config.training, space, positive_weight, None, False, len(admitted.names))
    clients = admitted.training(space, "floor").clients
    seconds, _ = keras_floor_seconds([(c.x, c.y) for c in clients], spec, repeats=3)
    return seconds


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _kib(value: str) -> int:
    return int(value.split()[0])


def _pss_kib(pid: int) -> int:
    """Proportional set size: resident pages, each shared one divided among the processes that map it (TensorFlow's
    libraries are mapped by every node: resident in each, in memory once)."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))


def node_memory(work: Path) -> list[dict]:
    """Each node process under `work` (found by its command line) with its children: peak and current MiB."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            if b"serve" not in command or not any(str(work).encode() in part for part in command):
                continue
            pid = int(proc.name)
            children = [int(c) for task in (proc / "task").iterdir() for c in (task / "children").read_text().split()]
            statuses = [_status(pid), *(_status(c) for c in children)]
        except (OSError, ValueError):
            continue
        found.append(
            {
                "pid": pid,
                "peak_mib": sum(_kib(s["VmHWM"]) for s in statuses) / 1024,
                "resident_mib": sum(_kib(s["VmRSS"]) for s in statuses) / 1024,
                "node_peak_mib": _kib(statuses[0]["VmHWM"]) / 1024,
                "proportional_mib": sum(_pss_kib(p) for p in [pid, *children]) / 1024,
                "children": [s["Name"].strip() for s in statuses[1:]],
            }
        )
    return found


def measure(kind: str, count: int, rows: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        paths = synthetic_institutions(work / "data", count, rows)
        config = parse_config(
            {
                "model_name": "benchmark",
                "quorum": count,
                "institutions": [{"name": n, "path": str(p)} for n, p in paths.items()],
                "training": {**TRAININGS[kind], "rounds": rounds},
            },
            work,
        )
        floor = floor_seconds(config, kind)
        started = time.perf_counter()
        with nodes_for(config, work / "nodes", _Console()) as coordinator:
            start = time.perf_counter() - started
            figures = trained_rounds(coordinator, work)
            nodes = node_memory(work / "nodes")
    return {
        "engine": kind,
        "institutions": count,
        "rows_per_institution": rows,
        "rounds": rounds,
        **figures,
        "floor_seconds_per_round": floor,
        "ratio": figures["seconds_per_round"] / floor,
        "nodes_start_seconds": start,
        "node_peak_mib_mean": statistics.mean(n["peak_mib"] for n in nodes),
        "node_peak_mib_max": max(n["peak_mib"] for n in nodes),
        "node_proportional_mib_mean": statistics.mean(n["proportional_mib"] for n in nodes),
        "nodes_proportional_mib_total": sum(n["proportional_mib"] for n in nodes),
        "node_processes": len(nodes),
        "node_children": sorted({c for n in nodes for c in n["children"]}),
        "coordinator_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--institutions", default="3,10,20")
    parser.add_argument("--engines", default="xgboost,mlp")
    parser.add_argument("--rows", type=int, default=5000, help="rows per institution")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of the network")
    parser.add_argument("--tree-rounds", type=int, default=60, help="trees (boosting rounds)")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/consortium_scale.json")
    args = parser.parse_args()
    print(
        f"{'engine':>8} {'banks':>5} {'s/round':>8} {'floor s':>8} {'ratio':>6} {'first s':>8} {'start s':>8} "
        f"{'node peak MiB (mean/max)':>25} {'nodes PSS MiB (mean/all)':>25} {'coordinator MiB':>16}"
    )
    results = []
    for kind in args.engines.split(","):
        for count in [int(n) for n in args.institutions.split(",")]:
            row = measure(kind, count, args.rows, args.tree_rounds if kind == "xgboost" else args.rounds)
            results.append(row)
            print(
                f"{kind:>8} {count:>5} {row['seconds_per_round']:>8.3f} {row['floor_seconds_per_round']:>8.3f} "
                f"{row['ratio']:>6.2f} {row['first_round_seconds']:>8.1f} {row['nodes_start_seconds']:>8.1f} "
                f"{row['node_peak_mib_mean']:>12.0f}/{row['node_peak_mib_max']:<12.0f} "
                f"{row['node_proportional_mib_mean']:>12.0f}/{row['nodes_proportional_mib_total']:<12.0f} "
                f"{row['coordinator_peak_mib']:>16.0f}",
                flush=True,
            )
    for row in results:
        if row["institutions"] == 3:
            print(
                f"target ({row['engine']} at 3 institutions <= 1.15x the floor): {row['ratio']:.2f}x -> "
                f"{'met' if row['ratio'] <= 1.15 else 'MISSED'}"
            )
    print(f"wrote {write_json(args.json, 'consortium_scale', args, results)}")


if __name__ == "__main__":
    main()
