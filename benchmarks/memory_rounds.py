"""Memory over many federated rounds: does a long retraining grow (upstream TFF issue #4590)?

    uv run python benchmarks/memory_rounds.py [--rounds 300] [--institutions 3] [--rows 8000] [--json out.json]

Trains an MLP(64, 32) with FedAvg exactly as a retraining does (robust aggregation, federated
validation every round, a checkpoint saved every round) and reads the resident memory (RSS) of this
process and of the TFF worker it drives after every round. Prints RSS at a few rounds, the peak
(VmHWM), and the growth from round 10 (after warm-up) to the last round; the target is under 10 %.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from common import write_json
from round_throughput import N_FEATURES, consortium


def _status_kib(pid: int, field: str) -> int:
    """A VmRSS / VmHWM figure of /proc/PID/status, in KiB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--institutions", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8000, help="rows per institution (10 %% validation)")
    parser.add_argument("--warmup", type=int, default=10, help="growth is measured from this round")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/memory_rounds.json")
    args = parser.parse_args()
    import os

    from fed_models import runtime
    from fed_models.keras_models import ModelSpec
    from fed_models.training import ClientData, TrainingSpec, train

    data = consortium(args.institutions, args.rows)
    cut = int(args.rows * 0.9)
    clients = [ClientData(f"institution_{i}", x[:cut], y[:cut]) for i, (x, y) in enumerate(data)]
    validation = [ClientData(f"institution_{i}", x[cut:], y[cut:]) for i, (x, y) in enumerate(data)]
    spec = TrainingSpec(model=ModelSpec("mlp", (64, 32), 0.3), rounds=args.rounds, seed=0)
    samples = []

    def sample(metrics) -> None:
        worker = runtime.worker_pid()
        python_kib, worker_kib = _status_kib(os.getpid(), "VmRSS"), _status_kib(worker, "VmRSS") if worker else 0
        samples.append(
            {
                "round": metrics.round,
                "python_mib": python_kib / 1024,
                "worker_mib": worker_kib / 1024,
                "total_mib": (python_kib + worker_kib) / 1024,
            }
        )
        if metrics.round in {1, args.warmup, args.rounds} or metrics.round % 50 == 0:
            s = samples[-1]
            print(
                f"round {metrics.round:>4}: RSS python {s['python_mib']:7.1f} MiB, TFF worker "
                f"{s['worker_mib']:7.1f} MiB, total {s['total_mib']:7.1f} MiB",
                flush=True,
            )

    with tempfile.TemporaryDirectory(prefix="fedrisk-memory-") as checkpoints:
        train(
            clients,
            np.zeros(N_FEATURES),
            np.ones(N_FEATURES),
            spec,
            validation=validation,
            checkpoint_dir=Path(checkpoints),
            on_round=sample,
        )
    worker = runtime.worker_pid()
    peak = {
        "python_mib": _status_kib(os.getpid(), "VmHWM") / 1024,
        "worker_mib": (_status_kib(worker, "VmHWM") / 1024) if worker else 0.0,
    }
    base = next(s for s in samples if s["round"] == min(args.warmup, args.rounds))
    last = samples[-1]
    growth = {
        k: (last[k] - base[k]) / base[k] if base[k] else float("nan") for k in ("python_mib", "worker_mib", "total_mib")
    }
    print(f"peak RSS: python {peak['python_mib']:.1f} MiB, TFF worker {peak['worker_mib']:.1f} MiB")
    print(
        f"growth round {base['round']} -> {last['round']}: python {growth['python_mib']:+.1%}, "
        f"worker {growth['worker_mib']:+.1%}, total {growth['total_mib']:+.1%}"
    )
    print(
        f"target (RSS growth under 10 % over {args.rounds} rounds): {'met' if growth['total_mib'] < 0.10 else 'MISSED'}"
    )
    print(f"wrote {write_json(args.json, 'memory_rounds', args, {'samples': samples, 'peak': peak, 'growth': growth})}")


if __name__ == "__main__":
    main()
