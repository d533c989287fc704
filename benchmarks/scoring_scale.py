"""Scoring at a bank's batch size: rows per second and peak memory of `fedrisk score` on 1,000,000 rows.

    uv run fedrisk demo                                   # once: a registered model to score with
    uv run python benchmarks/scoring_scale.py [--rows 1000000] [--model credit_default_demo@champion]

Builds a CSV of `--rows` applicants from the demo institutions' rows (sampled with replacement, new IDs,
the label dropped; 0.1 % of rows given an age outside the schema's range so the per-row rejection path
runs too), then runs `fedrisk score` on it in a fresh process and reads that process's peak resident memory
(ru_maxrss from wait4) and its wall time. The target: peak memory at most 1 GB, whatever the input's size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import ROOT, write_json


def applicants(out: Path, rows: int, sources: list[Path], label: str, seed: int = 0) -> int:
    """Write `rows` applicants to `out` in blocks; return the rows given an out-of-range age."""
    pool = pd.concat(pd.read_csv(p) for p in sources).drop(columns=[label]).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    written, bad, block = 0, 0, 100_000
    with open(out, "w", newline="") as file:
        while written < rows:
            n = min(block, rows - written)
            frame = pool.iloc[rng.integers(0, len(pool), n)].copy()
            frame["ID"] = np.arange(written + 1, written + n + 1)
            wrong = rng.random(n) < 0.001
            frame.loc[wrong, "AGE"] = 150
            bad += int(wrong.sum())
            frame.to_csv(file, index=False, header=written == 0)
            written += n
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--model", default="credit_default_demo@champion")
    parser.add_argument("--demo-data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/scoring_scale.json")
    args = parser.parse_args()
    from contract.schema import load_schema

    schema = load_schema("credit_default")
    sources = sorted(args.demo_data.glob("*/*.csv"))
    if not sources:
        sys.exit(f"no demo data under {args.demo_data}: run `uv run fedrisk demo` first")
    with tempfile.TemporaryDirectory() as scratch:
        given, output = Path(scratch) / "applicants.csv", Path(scratch) / "scores.csv"
        bad = applicants(given, args.rows, sources, schema.label.column)
        size_mb = given.stat().st_size / 1e6
        print(f"{args.rows:,} rows ({size_mb:.0f} MB), {bad} of them out of range; scoring with {args.model}")
        fedrisk = Path(sys.executable).parent / "fedrisk"
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(fedrisk), "score", "--model", args.model, "--input", str(given), "--output", str(output)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        said = process.stdout.read()
        process.stdout.close()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"fedrisk score failed:\n{said}")
        scored = pd.read_csv(output, usecols=[schema.output, "not_scored_because"])
        results = {
            "rows": args.rows,
            "input_mb": round(size_mb, 1),
            "seconds": round(seconds, 1),
            "rows_per_second": round(args.rows / seconds),
            "peak_rss_mib": round(usage.ru_maxrss / 1024),
            "scored": int(scored[schema.output].notna().sum()),
            "not_scored": int(scored["not_scored_because"].notna().sum()),
            "out_of_range_written": bad,
        }
    print(said.strip().splitlines()[-1])
    for key, value in results.items():
        print(f"  {key}: {value}")
    print(f"target (peak memory at most 1024 MiB): {'met' if results['peak_rss_mib'] <= 1024 else 'NOT met'}")
    print(f"wrote {write_json(args.json, 'scoring_scale', args, results)}")


if __name__ == "__main__":
    main()
