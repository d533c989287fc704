"""A big bank's node: seconds and peak memory of each stage a node runs on its own extract, at millions of rows.

    uv run python benchmarks/node_scale.py [--rows 1000000] [--stages validation,statistics,network_input,trees_round]

Writes one synthetic credit-default institution of `rows` (alder_bank's portfolio, generated and written in blocks
of 500,000 rows), then runs each stage as a node runs it, each in a fresh process whose peak resident memory is read
from wait4 (ru_maxrss) with its wall time:

- validation: the extract read, typed and checked by its Great Expectations suite (institution.validation);
- statistics: the federated statistics of its training rows (counts, sums, sums of squares); an extract over
  contract.data.STREAM_ABOVE_BYTES (256 MiB) is read a chunk at a time;
- network_input: its fit and validation rows encoded for a TFF round (the arrays a round trains on);
- trees_round: its rows encoded natively for XGBoost and one boosting round grown on them (a tree round's work
  at the node, without the histogram exchange).

The issue-35 target: validation, statistics and a round each under 3 GB at 10,000,000 rows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, write_json

STAGES = {
    "validation": """
report = validate_extract(extract, schema, None, EXPECTATIONS_DIR)
print(report.rows, report.passed)
""",
    "statistics": """
stats = LocalConsortium((extract,)).statistics(extract.institution, schema, features, split)
print(stats.count)
""",
    "network_input": """
runner = LocalConsortium((extract,)).training(space(), "node-scale")
print(len(runner.clients[0].y), runner.clients[0].x.dtype)
""",
    "trees_round": """
import xgboost
[data] = LocalConsortium((extract,)).tree_data(space())
matrix = xgboost.DMatrix(data.x_fit, label=data.y_fit, enable_categorical=True)
xgboost.train({"tree_method": "hist", "max_depth": 4, "objective": "binary:logistic"}, matrix, num_boost_round=1)
print(len(data.y_fit))
""",
}
PRELUDE = """
import sys
sys.path.insert(0, {root!r})
import flows  # library defaults
from pathlib import Path
from consortium.local import LocalConsortium
from contract.data import Extract, Split
from contract.schema import load_schema
from institution.statistics import feature_space
from institution.validation import EXPECTATIONS_DIR, validate_extract

schema = load_schema("credit_default")
features = [f for f in schema.features if f not in schema.protected_columns]
split = Split(0.2, 0.1, 0)

def digest(path):  # the node's extract is pinned to what validation saw: every stage's read checks it
    import hashlib
    sha256 = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha256.update(block)
    return sha256.hexdigest()

extract = Extract("alder_bank", Path({path!r}), {{}}).validated(digest({path!r}))

def space():
    stats = LocalConsortium((extract,)).statistics(extract.institution, schema, features, split)
    return feature_space(schema, features, split, [stats])
"""


def write_extract(path: Path, rows: int, block: int = 500_000) -> None:
    """alder_bank's portfolio, `rows` of it, generated and appended `block` rows at a time (each its own seed)."""
    from dataclasses import replace

    from contract.synthetic import PORTFOLIOS, synthesize_institution

    with open(path, "w", newline="") as file:
        for index, start in enumerate(range(0, rows, block)):
            size = min(block, rows - start)
            portfolio = replace(PORTFOLIOS[0], rows=size)
            frame = synthesize_institution(portfolio, seed=index, first_id=start + 1)
            frame.to_csv(file, index=False, header=start == 0)


def run_stage(stage: str, path: Path) -> dict:
    """One stage in a fresh process: its wall seconds (interpreter start included) and peak resident MiB."""
    code = PRELUDE.format(root=str(ROOT), path=str(path)) + STAGES[stage]
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    out, err = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    code_ = os.waitstatus_to_exitcode(status)
    return {
        "stage": stage,
        "seconds": seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "exit": code_,
        "output": out.strip()[-200:],
        **({"error": err.strip()[-600:]} if code_ else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/node_scale.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "credit.csv"
        started = time.perf_counter()
        write_extract(path, args.rows)
        print(
            f"{args.rows:,} rows written ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        print(f"{'stage':>14} {'seconds':>8} {'peak MiB':>9}")
        for stage in args.stages.split(","):
            row = run_stage(stage, path)
            results.append({**row, "rows": args.rows, "input_mb": path.stat().st_size / 1e6})
            failed = f"  FAILED ({row['exit']}): {row.get('error', '')[-300:]}" if row["exit"] else ""
            print(f"{stage:>14} {row['seconds']:>8.1f} {row['peak_rss_mib']:>9.0f}{failed}", flush=True)
    worst = max(r["peak_rss_mib"] for r in results)
    verdict = "met" if worst < 3072 else "MISSED"
    print(f"target (each stage under 3 GB at {args.rows:,} rows): {worst:.0f} MiB -> {verdict}")
    print(f"wrote {write_json(args.json, 'node_scale', args, results)}")


if __name__ == "__main__":
    main()
