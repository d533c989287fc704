"""What the benchmark scripts share: the real UCI data and its partitions, the machine, JSON output.

The scripts run from a clean checkout (`uv run python benchmarks/NAME.py`); this module puts the
project root on the import path and sets the project's library defaults before anything is imported.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flows  # noqa: E402,F401  (library defaults: quiet TensorFlow, no telemetry)
from contract.data import read_institution, split_holdout  # noqa: E402
from contract.schema import load_schema  # noqa: E402
from institution.statistics import consortium_layout, local_statistics, standardization  # noqa: E402

CREDIT = load_schema("credit_default")
FEATURE_COLUMNS, LABEL_COLUMN = list(CREDIT.features), CREDIT.label.column

UCI_DIR = ROOT.parent / "shared" / "data" / "uci_default_credit"
RESULTS_DIR = ROOT / "benchmarks" / "results"
BANKS = ("bank_a", "bank_b", "bank_c")
# Non-IID re-partition of the same training rows by credit limit (NT$): four lenders of very
# unequal size and risk, from a consumer lender of small limits (32 % default) to a private bank.
# Rows (default rate): 6,234 (32 %), 10,138 (22 %), 6,217 (15 %), 1,411 (12 %).
LIMIT_BANDS = {
    "consumer_lender": (0, 50_000),
    "retail_bank": (50_000, 200_000),
    "premier_bank": (200_000, 400_000),
    "private_bank": (400_000, float("inf")),
}
PARTITIONS = ("iid", "limit_band")


@dataclass(frozen=True)
class Institution:
    """One institution's rows for a benchmark: fit and validation arrays (they stay separate)."""

    name: str
    x_fit: np.ndarray
    y_fit: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray


def require_uci(data_dir: Path) -> None:
    if not Path(data_dir).is_dir():
        sys.exit(f"UCI data not found at {data_dir}; see ../shared/data/README.md")


def arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return frame[FEATURE_COLUMNS].to_numpy(np.float64), frame[LABEL_COLUMN].to_numpy(np.float64)


def partition_uci(data_dir: Path, partition: str) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The training rows of bank_a/b/c as institutions, and holdout.csv.

    iid: the three banks as shipped (a random split). limit_band: the same 24,000 rows regrouped
    into the LIMIT_BANDS lenders, so institutions differ in size, features and default rate.
    """
    banks = {bank: read_institution(bank, Path(data_dir) / f"{bank}.csv", CREDIT) for bank in BANKS}
    holdout = read_institution("holdout", Path(data_dir) / "holdout.csv", CREDIT)
    if partition == "iid":
        return banks, holdout
    if partition == "limit_band":
        rows = pd.concat(banks.values(), ignore_index=True)
        return {
            name: rows[(rows.LIMIT_BAL > low) & (rows.LIMIT_BAL <= high)] for name, (low, high) in LIMIT_BANDS.items()
        }, holdout
    raise ValueError(f"unknown partition {partition!r}; one of {PARTITIONS}")


def segment(holdout: pd.DataFrame, partition: str, institution: str) -> pd.DataFrame:
    """The holdout rows of an institution's own population (all of them for the IID banks)."""
    if partition == "limit_band":
        low, high = LIMIT_BANDS[institution]
        return holdout[(holdout.LIMIT_BAL > low) & (holdout.LIMIT_BAL <= high)]
    return holdout


def split_institutions(frames: dict[str, pd.DataFrame], validation_fraction: float, seed: int) -> list[Institution]:
    """Each institution's rows split (stratified, seeded per institution) into fit and validation."""
    found = []
    for name, frame in frames.items():
        fit, validation = split_holdout(frame, LABEL_COLUMN, fraction=validation_fraction, seed=seed, institution=name)
        found.append(Institution(name, *arrays(fit), *arrays(validation)))
    return found


def standardize(institutions: list[Institution]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean and std of the institutions' fit rows, through the pipeline's own federated statistics."""
    statistics = [
        local_statistics(
            i.name,
            pd.DataFrame(i.x_fit, columns=FEATURE_COLUMNS).assign(**{LABEL_COLUMN: i.y_fit}),
            CREDIT,
            FEATURE_COLUMNS,
        )
        for i in institutions
    ]
    return standardization(consortium_layout(CREDIT, FEATURE_COLUMNS, statistics), statistics)


def machine() -> dict[str, object]:
    """The machine the figures come from."""
    model = "unknown"
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    memory_gib = None
    try:
        kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        memory_gib = round(kib / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_json(path: Path | None, name: str, args, results) -> Path:
    """Write the figures with the arguments and machine that produced them (default benchmarks/results/)."""
    path = Path(path) if path else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "benchmark": name,
                "command": " ".join(["uv run python", *sys.argv]),
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "machine": machine(),
                "results": results,
            },
            indent=2,
            default=float,
        )
    )
    return path


def mean_std(values: list[float]) -> str:
    """`0.7774 ± 0.0008` (population std over seeds)."""
    values = [v for v in values if v == v]
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}" if values else "n/a"


def synthetic_institutions(directory: Path, count: int, rows: int) -> dict[str, Path]:
    """`count` synthetic credit-default institutions of `rows` each: the demo's portfolios in turn (named after
    them, with a number from the fifth on), each with its own seed and IDs, under `directory/NAME/credit.csv`."""
    from contract.synthetic import PORTFOLIOS, Portfolio, synthesize_institution

    paths = {}
    for index in range(count):
        base = PORTFOLIOS[index % len(PORTFOLIOS)]
        name = f"{base.name}_{index}" if index >= len(PORTFOLIOS) else base.name
        portfolio = Portfolio(
            name, rows, base.default_rate, base.median_limit, base.age_mean, base.education_mix, base.risk_shift
        )
        path = directory / name / "credit.csv"
        path.parent.mkdir(parents=True)
        synthesize_institution(portfolio, seed=index, first_id=1 + index * rows).to_csv(path, index=False)
        paths[name] = path
    return paths
