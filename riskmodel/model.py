"""An exported model on disk: `riskmodel.json` (engine, layout, output name) beside the engine's file.

It is data, not code: loading it runs this package's code only (a Keras model of built-in layers,
or an XGBoost booster), so an institution can score a model it was sent without running code that
came with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from riskmodel.layout import Layout

MANIFEST = "riskmodel.json"
KERAS_FILE = "model.keras"


@dataclass
class RiskModel:
    """A loaded model: raw rows -> probability of the schema's positive label."""

    engine: str
    layout: Layout
    output: str
    predictor: object
    scaling: object = None  # riskmodel.scorecard.Scaling of a logistic regression scorecard

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        x = self.layout.encode(frame)
        if self.engine == "keras":
            return self.predictor(x.astype(np.float32), training=False).numpy().reshape(-1).astype(np.float64)
        raise ValueError(f"unknown engine {self.engine!r}")


def save(directory: Path, *, engine: str, layout: Layout, output: str, engine_file: str,
         scaling=None) -> Path:
    """Write the manifest beside an engine file already in `directory`; `scaling` (a Scaling) makes a
    logistic regression a points scorecard."""
    directory = Path(directory)
    manifest = {"engine": engine, "engine_file": engine_file, "output": output, "layout": json.loads(layout.to_json()),
                "scorecard": None if scaling is None else vars(scaling)}
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
    else:
        raise ValueError(f"{directory}: unknown engine {manifest['engine']!r}")
    from riskmodel.scorecard import Scaling

    scaling = Scaling(**manifest["scorecard"]) if manifest.get("scorecard") else None
    return RiskModel(manifest["engine"], layout, manifest["output"], predictor, scaling)


def is_exported(directory: Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()
