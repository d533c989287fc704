"""What keeping TFF's worker on loopback costs: per retraining (the library, the socket check) and per round.

    uv run python benchmarks/worker_isolation.py [--institutions 3,10] [--rows 10000] [--rounds 5] [--repeats 3]

Per retraining: building the loopback-bind library (first use on a host, then cached), finding it
cached, and reading the worker's listening sockets from /proc after it starts. Per round: seconds
per FedAvg round (MLP(64, 32), one local epoch at batch 64, as benchmarks/round_throughput.py) with
the library preloaded, against the same rounds with a bare worker. The bare worker listens on every
interface, so both variants run in a network namespace of their own that has loopback only (`unshare
-rn`; the same for both, so only the library differs): nothing is exposed while measuring. Runs
alternate between the two (which goes first alternates too), `--repeats` times each, and must end with the
same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, write_json
from round_throughput import consortium


def measure_rounds(institutions: int, rows: int, rounds: int, exposed: bool) -> dict:
    """In this process: seconds per round with the worker isolated (or bare, `exposed`), and a digest of
    the trained weights (the same seed must give the same weights either way)."""
    import hashlib

    from fed_models import runtime
    from fed_models.keras_models import ModelSpec
    from fed_models.training import ClientData, TrainingSpec, train
    from hostguard import loopback

    runtime.ensure_context(loopback.isolation(allow_exposed=True) if exposed else loopback.isolation(False))
    spec = TrainingSpec(model=ModelSpec("mlp", (64, 32), 0.0), rounds=rounds + 1, seed=0)
    data = consortium(institutions, rows)
    stamps = [time.perf_counter()]
    result = train(
        [ClientData(f"institution_{i}", x, y) for i, (x, y) in enumerate(data)],
        np.zeros(data[0][0].shape[1]),
        np.ones(data[0][0].shape[1]),
        spec,
        on_round=lambda _: stamps.append(time.perf_counter()),
    )
    seconds = list(np.diff(stamps))
    weights = hashlib.sha256(b"".join(np.asarray(w, dtype=np.float32).tobytes() for w in result.weights)).hexdigest()
    check = []
    for _ in range(20):
        started = time.perf_counter()
        loopback.listening_addresses(runtime.worker_pid())
        check.append(time.perf_counter() - started)
    return {
        "seconds_per_round": statistics.median(seconds[1:]),
        "socket_check_seconds": statistics.median(check),
        "weights_sha256": weights,
    }


def library_seconds() -> dict:
    """Build the library into an empty cache (first use), then find it cached."""
    from hostguard import loopback

    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        started = time.perf_counter()
        loopback.build_preload()
        cold = time.perf_counter() - started
        warm = []
        for _ in range(50):
            started = time.perf_counter()
            loopback.isolation(allow_exposed=False)
            warm.append(time.perf_counter() - started)
    del os.environ["XDG_CACHE_HOME"]
    return {"build_seconds": cold, "cached_seconds": statistics.median(warm)}


def run_child(institutions: int, rows: int, rounds: int, exposed: bool) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--institutions",
        str(institutions),
        "--rows",
        str(rows),
        "--rounds",
        str(rounds),
    ] + (["--exposed"] if exposed else [])
    command = [
        "unshare",
        "--user",
        "--map-root-user",
        "--net",
        "sh",
        "-c",
        'ip link set lo up && exec "$0" "$@"',
        *command,
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        sys.exit(f"measuring {'bare' if exposed else 'isolated'} rounds failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--institutions", default="3,10")
    parser.add_argument("--rows", type=int, default=10_000, help="rows per institution")
    parser.add_argument("--rounds", type=int, default=8, help="rounds measured after the warm-up round")
    parser.add_argument("--repeats", type=int, default=4, help="runs of each variant, alternating")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/worker_isolation.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--exposed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_rounds(int(args.institutions), args.rows, args.rounds, args.exposed)))
        return

    library = library_seconds()
    print(
        f"loopback-bind library: built in {library['build_seconds']:.3f} s on first use, "
        f"found cached in {library['cached_seconds'] * 1e3:.3f} ms per retraining"
    )
    results = {"library": library, "rounds": []}
    print(
        f"{'institutions':>12} {'rows each':>10} {'isolated s/round':>17} {'bare s/round':>13} {'change':>8} "
        f"{'socket check ms':>16} weights"
    )
    for n in [int(v) for v in args.institutions.split(",")]:
        isolated, bare = [], []
        for repeat in range(args.repeats):  # alternate which goes first: a run after another is a little slower
            for exposed in (False, True) if repeat % 2 == 0 else (True, False):
                (bare if exposed else isolated).append(run_child(n, args.rows, args.rounds, exposed=exposed))
        with_library = statistics.median(r["seconds_per_round"] for r in isolated)
        without = statistics.median(r["seconds_per_round"] for r in bare)
        check = statistics.median(r["socket_check_seconds"] for r in isolated)
        same = len({r["weights_sha256"] for r in isolated + bare}) == 1
        row = {
            "institutions": n,
            "rows_per_institution": args.rows,
            "isolated_seconds_per_round": with_library,
            "bare_seconds_per_round": without,
            "change": with_library / without - 1,
            "socket_check_seconds": check,
            "same_weights": same,
            "runs": {"isolated": isolated, "bare": bare},
        }
        results["rounds"].append(row)
        print(
            f"{n:>12} {args.rows:>10} {with_library:>17.3f} {without:>13.3f} {row['change']:>+8.1%} "
            f"{check * 1e3:>16.3f} {'same weights' if same else 'WEIGHTS DIFFER'}",
            flush=True,
        )
    worst = max(abs(r["change"]) for r in results["rounds"])
    print(
        f"target (round time moves by less than 5 %): largest change {worst:.1%} -> "
        f"{'met' if worst < 0.05 else 'MISSED'}"
    )
    print(f"wrote {write_json(args.json, 'worker_isolation', args, results)}")


if __name__ == "__main__":
    main()
