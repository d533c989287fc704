"""An exported model on disk: `riskmodel.json` (engine, layout, output name) beside the engine's file.

It is data, not code: loading it runs this package's code only (a Keras model of built-in layers,
or an XGBoost booster), so an institution can score a model it was sent without running code that
came with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from riskmodel.bins import FeatureBins
from riskmodel.layout import Layout
from riskmodel.scaling import Scaling

MANIFEST = "riskmodel.json"
KERAS_FILE = "model.keras"
XGBOOST_FILE = "booster.json"
ENGINE_FILES = (KERAS_FILE, XGBOOST_FILE)
BINS_KEY = "monitoring_bins"  # the manifest's development bins (riskmodel.bins.FeatureBins entries)
RUNTIME_PACKAGES = {"keras": "tensorflow", "xgboost": "xgboost"}  # the package that loads each format


@dataclass
class RiskModel:
    """A loaded model: raw rows -> probability of the schema's positive label."""

    engine: str
    layout: Layout
    output: str
    predictor: Any  # a Keras model or an XGBoost Booster, as `engine` says
    scaling: Scaling | None = None  # a logistic regression scorecard's points scaling
    bins: tuple[FeatureBins, ...] = ()  # each feature's development bins, which monitoring counts

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.engine == "keras":
            x = self.layout.encode(frame)
            return self.predictor(x.astype(np.float32), training=False).numpy().reshape(-1).astype(np.float64)
        if self.engine == "xgboost":
            import xgboost

            matrix = xgboost.DMatrix(
                self.layout.encode_native(frame), feature_types=self.layout.native_types(), enable_categorical=True
            )
            return self.predictor.predict(matrix).astype(np.float64)
        raise ValueError(f"unknown engine {self.engine!r}")

    def feature_gain(self) -> dict[str, float]:
        """XGBoost: total gain of each raw feature's splits (feature importance); empty for other engines."""
        if self.engine != "xgboost":
            return {}
        names = self.layout.raw_features
        return {
            names[int(key[1:])]: value for key, value in self.predictor.get_score(importance_type="total_gain").items()
        }


def save(
    directory: Path,
    *,
    engine: str,
    layout: Layout,
    output: str,
    engine_file: str,
    scaling: Scaling | None = None,
    bins: tuple[FeatureBins, ...] = (),
) -> Path:
    """Write the manifest beside an engine file already in `directory`; `scaling` (a Scaling) makes a
    logistic regression a points scorecard; `bins` are the features' development bins monitoring counts."""
    directory = Path(directory)
    manifest = {
        "engine": engine,
        "engine_file": engine_file,
        "output": output,
        "layout": json.loads(layout.to_json()),
        "scorecard": None if scaling is None else vars(scaling),
        BINS_KEY: [b.to_manifest() for b in bins],
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return directory


def load(directory: Path) -> RiskModel:
    """Load an exported model from its directory."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    layout = Layout.from_json(json.dumps(manifest["layout"]))
    if manifest["engine"] == "keras":
        import tensorflow as tf

        predictor = tf.keras.models.load_model(directory / manifest["engine_file"], compile=False, safe_mode=True)
    elif manifest["engine"] == "xgboost":
        import xgboost

        predictor = xgboost.Booster(model_file=str(directory / manifest["engine_file"]))
    else:
        raise ValueError(f"{directory}: unknown engine {manifest['engine']!r}")
    scaling = Scaling(**manifest["scorecard"]) if manifest.get("scorecard") else None
    return RiskModel(manifest["engine"], layout, manifest["output"], predictor, scaling, load_manifest_bins(directory))


def load_manifest_bins(directory: Path) -> tuple[FeatureBins, ...]:
    """An exported model's development bins, without loading its engine."""
    manifest = json.loads((Path(directory) / MANIFEST).read_text())
    return tuple(FeatureBins.from_manifest(entry) for entry in manifest.get(BINS_KEY, []))


def files_digest(directory: Path) -> str:
    """SHA-256 of an exported model's files (manifest and engine file): what names one model version exactly."""
    import hashlib

    hasher = hashlib.sha256()
    for name in (MANIFEST, *ENGINE_FILES):
        path = Path(directory) / name
        if path.is_file():
            hasher.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return hasher.hexdigest()


def is_exported(directory: Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()
