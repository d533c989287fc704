"""What a node remembers of each training it took part in, on its own disk: the layout, development bins and
champion named when the training began, the models it trained (each global weights it was sent, the trees its
worker grew), how often the coordinator had models evaluated for it, and each challenger it evaluated with its
own development counts. `Evaluate` scores only models tied to a run this way, at most the policy's number of
times per run, and `Monitor` only a challenger evaluated here: a crafted model cannot read out the institution's
rows by label, nor crafted bins its customers' values."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def round_weights_digest(weights: dict) -> str:
    """The digest of a round's global weights as sent (fed_models.training.weights_as_lists): what a node's round
    log keys a trained round by, and a buffered secure sum names each update by."""
    return weights_digest([*weights["trainable"], *weights["non_trainable"]])


def weights_digest(arrays: Iterable[Any]) -> str:
    """SHA-256 of a model's trainable weights as float32 (the same for TFF's weights and the exported Keras model)."""
    hasher = hashlib.sha256()
    for array in arrays:
        hasher.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return hasher.hexdigest()


@dataclass
class RunRecord:
    run_key: str = ""
    layout: str = ""  # the run's feature layout (JSON), as sent when it began
    bins: list[dict] | None = None  # the development bins its models must count (riskmodel.bins manifest entries)
    secure: bool = False  # trained under secure aggregation: its models' counts leave only in secure sums
    champion: str | None = None  # riskmodel.model.files_digest of the champion named when it began; None: none
    weights: list[str] = field(default_factory=list)  # weights_digest of each global weights this node was sent
    booster: str | None = None  # SHA-256 of the trees this node's XGBoost worker grew
    evaluations: int = 0  # Evaluate requests served or refused for this run
    # riskmodel.model.files_digest of each challenger evaluated here -> its counts of this institution's development
    # rows (institution.monitoring.MonitoringCounts as a dict): what Monitor compares the institution's months with
    challengers: dict[str, dict] = field(default_factory=dict)
    # The last evaluation's counts by protected group per role (institution.fairness.FairnessCounts as a dict): what
    # this node adds to the run's secure sum of fair-lending counts, which secure aggregation kept out of Evaluate
    fairness: dict[str, dict] = field(default_factory=dict)


class RunRecords:
    """One JSON file per training under `directory`; updates are serialized and written atomically."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def _file(self, run_key: str) -> Path:
        return self.directory / f"{hashlib.sha256(run_key.encode()).hexdigest()[:32]}.json"

    def get(self, run_key: str) -> RunRecord | None:
        path = self._file(run_key)
        return RunRecord(**json.loads(path.read_text())) if path.exists() else None

    def update(self, run_key: str, change: Callable[[RunRecord], object]) -> RunRecord:
        """`change(record)` applied to the run's record (a new one if there is none), saved, and returned."""
        with self.lock:
            record = self.get(run_key) or RunRecord()
            change(record)
            path = self._file(run_key)
            partial = path.with_name(path.name + ".partial")
            partial.write_text(json.dumps(asdict(record)))
            os.replace(partial, path)
            return record

    def begin(self, run_key: str, layout: str, champion: str | None, bins: list[dict], secure: bool = False) -> None:
        def named(record: RunRecord) -> None:
            record.run_key, record.layout, record.champion, record.bins = run_key, layout, champion, bins
            record.secure = record.secure or secure

        self.update(run_key, named)

    def with_challenger(self, model: str) -> RunRecord | None:
        """The record of the run whose challenger, by files digest, this node evaluated; None if none."""
        with self.lock:
            for path in self.directory.glob("*.json"):
                record = RunRecord(**json.loads(path.read_text()))
                if model in record.challengers:
                    return record
        return None

    def saw_weights(self, run_key: str, arrays: Iterable[Any]) -> None:
        digest = weights_digest(arrays)

        def add(record: RunRecord) -> None:
            if digest not in record.weights:
                record.weights.append(digest)

        self.update(run_key, add)
