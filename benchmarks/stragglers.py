"""One slow bank among the UCI banks at nodes: synchronous rounds against a round deadline and buffered
asynchronous aggregation (FedBuff).

    uv run python benchmarks/stragglers.py [--slow bank_c] [--cpu 0.1] [--deadline 0.5] [--rounds 150] [--modes ...]

bank_a/b/c each run a `fedrisk node serve` process (mutual TLS on loopback, each with only its own extract) and
train configs/uci_default_credit.yaml's FedAdam MLP(64, 32). One node is made genuinely slow: its process (and the
TFF worker it starts) is put in a cgroup the benchmark creates, limited to `--cpu` of one core (slower hardware,
the same rows). For each schedule the script records the wall time from the first round's start at which each
round's model was made, then scores every round's model on the banks' own holdout splits (20 %, as the pipeline
splits them; never seen in training), weighted by rows: the time to a weighted holdout AUC of `--target`, and the
AUC of the model the run exports (the best round by federated validation loss; early stopping with `--patience`:
the config's 10 stops the synchronous run at 0.769, before it reaches 0.77).
Needs root for the cgroup (v1 `cpu` or v2 `cpu.max`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import BANKS, ROOT, UCI_DIR, require_uci, write_json

from contract.data import Extract, Split, labels, load_part
from flows.config import load_config
from flows.cross_silo_demo import nodes_for
from flows.validate import consortium_of
from institution.evaluation import binary_metrics
from institution.statistics import feature_space

SCHEDULES = {
    "synchronous": {"mode": "synchronous"},
    "deadline": {"mode": "deadline", "late_updates": "discount"},
    "buffered": {"mode": "buffered", "buffer_size": 2},
}


class _Console:
    def print(self, *args, **kwargs) -> None:
        print(*args, flush=True)


def slowing_possible() -> bool:
    """Whether this process may create a cgroup with a CPU limit (cgroup v1 `cpu` or v2 `cpu.max`)."""
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cgroup.controllers")
    if v1.is_dir():
        return os.access(v1, os.W_OK)
    return v2.exists() and "cpu" in v2.read_text().split() and os.access(v2.parent, os.W_OK)


class SlowNode:
    """A cgroup limiting one node process (and the children it starts later) to a share of one core."""

    def __init__(self, name: str, cpu: float):
        self.cpu = cpu
        if not slowing_possible():
            raise SystemExit("a slow node needs a writable cgroup cpu controller (/sys/fs/cgroup): run as root")
        v1 = Path("/sys/fs/cgroup/cpu")
        if v1.is_dir():
            self.directory = v1 / f"fedrisk_slow_{name}_{os.getpid()}"
            self.directory.mkdir()
            (self.directory / "cpu.cfs_period_us").write_text("100000")
            (self.directory / "cpu.cfs_quota_us").write_text(str(int(100000 * cpu)))
        else:
            self.directory = Path("/sys/fs/cgroup") / f"fedrisk_slow_{name}_{os.getpid()}"
            self.directory.mkdir()
            (self.directory / "cpu.max").write_text(f"{int(100000 * cpu)} 100000")

    def add(self, pid: int) -> None:
        (self.directory / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        parent = self.directory.parent / "cgroup.procs"
        for pid in (self.directory / "cgroup.procs").read_text().split():
            try:
                parent.write_text(pid)
            except OSError:
                pass  # gone
        self.directory.rmdir()


def node_pid(node_config: Path) -> int:
    """The process serving `node_config` (nodes_for starts it; its pid is found by its command line)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in command and str(node_config).encode() in command:
                return int(entry.name)
    raise SystemExit(f"no node process serves {node_config}")


class Recording:
    """The nodes' training runner, with the wall time at which each round's model was made (what a benchmark
    may keep: the model, not anything of the institutions)."""

    def __init__(self, runner):
        self.runner, self.models, self.started = runner, [], None

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def train_round(self, stages, round_num, weights, chosen):
        if self.started is None:
            self.started = time.perf_counter()
        return self.runner.train_round(stages, round_num, weights, chosen)

    def validate(self, stages, round_num, weights):
        self.models.append((time.perf_counter() - self.started, [np.asarray(w) for w in weights.trainable]))
        return self.runner.validate(stages, round_num, weights)


def holdouts(config) -> list:
    """Each bank's holdout split as the pipeline makes it (read here by the benchmark, which has the files)."""
    split = Split(config.holdout_fraction, config.training.validation_fraction, config.seed)
    return [load_part(Extract(i.name, i.path), config.data_schema, split, "holdout") for i in config.institutions]


def weighted_auc(model, parts, space) -> float:
    from fed_models.keras_models import predict_proba

    total, weighted = 0, 0.0
    for frame in parts:
        p = predict_proba(model, space.layout.encode(frame))
        weighted += len(frame) * binary_metrics(labels(frame, space.schema), p)["roc_auc"]
        total += len(frame)
    return weighted / total


def train_once(coordinator, mode: str, deadline: float, rounds: int, patience: int, staleness: int, parts) -> dict:
    from engines.tff import training_spec
    from fed_models.keras_models import build_model
    from fed_models.training import train

    schedule = {
        **SCHEDULES[mode],
        **({"deadline_seconds": deadline} if mode == "deadline" else {}),
        "max_staleness": staleness,
    }
    training = coordinator.training.model_copy(
        update={
            "rounds": rounds,
            "schedule": type(coordinator.training.schedule)(**schedule),
            "early_stopping": type(coordinator.training.early_stopping)(patience=patience),
        }
    )
    consortium = consortium_of(coordinator)
    schema, features = coordinator.data_schema, coordinator.feature_names
    split = Split(coordinator.holdout_fraction, training.validation_fraction, coordinator.seed)
    reports = [consortium.validate(n, schema, None, ROOT / "expectations") for n in consortium.names]
    admitted = consortium.admit(reports)
    space = feature_space(
        schema, features, split, [admitted.statistics(n, schema, features, split) for n in admitted.names]
    )
    positive_weight = space.positive_weight(training.positive_class_weight)
    runner = Recording(admitted.training(space, f"stragglers-{mode}-{time.time_ns()}"))
    runner.runner.log = lambda line: print(f"    {line}", flush=True) if "late" in line or "missed" in line else None
    spec = training_spec(training, space, positive_weight, None, False, len(admitted.names))
    begun = time.perf_counter()
    result = train(runner, np.asarray(space.mean), np.asarray(space.std), spec)
    wall = time.perf_counter() - begun
    model = build_model(spec.model, np.asarray(space.mean, dtype=np.float32), np.asarray(space.std, dtype=np.float32))
    curve = []
    for seconds, weights in runner.models:
        model.set_weights(weights)
        curve.append((seconds, weighted_auc(model, parts, space)))
    model.set_weights(result.weights)
    final = weighted_auc(model, parts, space)
    rows = result.rounds
    return {
        "mode": mode,
        "schedule": schedule,
        "rounds": len(rows),
        "best_round": result.best_round,
        "wall_seconds": wall,
        "seconds_per_round": float(np.median([r.seconds for r in rows])),
        "final_auc": final,
        "curve": curve,
        "late_applied": sum(r.late_applied for r in rows),
        "late_dropped": sum(r.late_dropped for r in rows),
        "missed_deadline": sum(r.missed_deadline for r in rows),
        # each institution's totals over the run: [on time, late applied, late dropped, missed the deadline]
        "participation": {name: np.sum(rounds, axis=0).tolist() for name, rounds in result.participation.items()},
    }


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((seconds for seconds, auc in curve if auc >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=UCI_DIR)
    parser.add_argument("--slow", default="bank_c", choices=BANKS)
    parser.add_argument("--cpu", type=float, default=0.1, help="the slow node's share of one core")
    parser.add_argument("--rounds", type=int, default=150, help="most rounds (server steps) of each run")
    parser.add_argument("--deadline", type=float, default=0.5, help="seconds a deadline round waits")
    parser.add_argument("--target", type=float, default=0.77, help="weighted holdout AUC to reach")
    parser.add_argument(
        "--patience", type=int, default=30, help="early stopping's patience for every schedule (the config's is 10)"
    )
    parser.add_argument("--max-staleness", type=int, default=4, help="versions a late update may be behind")
    parser.add_argument("--modes", default=",".join(SCHEDULES), help=f"comma-separated, of {list(SCHEDULES)}")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/stragglers.json")
    args = parser.parse_args()
    require_uci(args.data_dir)

    simulation = load_config(ROOT / "configs" / "uci_default_credit.yaml")
    parts = holdouts(simulation)
    results = []
    with tempfile.TemporaryDirectory() as work, nodes_for(simulation, Path(work) / "nodes", _Console()) as coordinator:
        slow = SlowNode(args.slow, args.cpu)
        try:
            slow.add(node_pid(Path(work) / "nodes" / args.slow / "node.yaml"))
            print(f"{args.slow}'s node limited to {args.cpu:g} of a core (cgroup {slow.directory})", flush=True)
            for mode in args.modes.split(","):
                print(f"{mode}:", flush=True)
                result = train_once(
                    coordinator, mode, args.deadline, args.rounds, args.patience, args.max_staleness, parts
                )
                result["seconds_to_target"] = time_to(result["curve"], args.target)
                results.append(result)
                reached = result["seconds_to_target"]
                print(
                    f"  {result['rounds']} rounds in {result['wall_seconds']:.1f} s "
                    f"({result['seconds_per_round']:.2f} s/round median); "
                    f"AUC {args.target} at {'never' if reached is None else f'{reached:.1f} s'}; "
                    f"exported round {result['best_round']}: weighted holdout AUC {result['final_auc']:.4f}; "
                    f"late applied {result['late_applied']}, dropped {result['late_dropped']}, "
                    f"missed deadlines {result['missed_deadline']}",
                    flush=True,
                )
        finally:
            slow.remove()
    base = next((r for r in results if r["mode"] == "synchronous"), None)
    header = f"{'s to ' + str(args.target):>10} {'speed-up':>9} {'final AUC':>10} {'vs sync':>8} {'rounds':>7}"
    print(f"\n{'schedule':>12} {header}")
    for r in results:
        speedup = (
            base["seconds_to_target"] / r["seconds_to_target"]
            if base and base["seconds_to_target"] and r["seconds_to_target"]
            else float("nan")
        )
        r["speedup_to_target"] = speedup
        r["auc_vs_synchronous"] = r["final_auc"] - base["final_auc"] if base else float("nan")
        reached = "never" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
        print(
            f"{r['mode']:>12} {reached:>10} {speedup:>8.2f}x {r['final_auc']:>10.4f} "
            f"{r['auc_vs_synchronous']:>+8.4f} {r['rounds']:>7}"
        )
    for r in results:
        if base and r is not base:
            met = r["speedup_to_target"] >= 1.7 and abs(r["auc_vs_synchronous"]) <= 0.003
            r["target_met"] = met
            print(
                f"target (>= 1.7x faster to {args.target}, final AUC within 0.003 of synchronous): {r['mode']} "
                f"{r['speedup_to_target']:.2f}x, {r['auc_vs_synchronous']:+.4f} -> {'met' if met else 'MISSED'}"
            )
    for r in results:
        r["curve"] = [[round(s, 3), round(a, 5)] for s, a in r["curve"]]
    print(f"wrote {write_json(args.json, 'stragglers', args, results)}")


if __name__ == "__main__":
    main()
