"""Keras model builders. Standardization is a layer of the model, so it scores raw rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

ModelKind = Literal["logistic_regression", "mlp"]


@dataclass(frozen=True)
class ModelSpec:
    """Which model: a logistic regression (scorecard) or an MLP with these hidden sizes and dropout; its output
    starts at `initial_bias` (the log-odds of the consortium's base rate: rounds are not spent reaching it)."""

    kind: ModelKind = "logistic_regression"
    hidden_units: tuple[int, ...] = ()
    dropout: float = 0.0
    seed: int = 0
    initial_bias: float = 0.0


def build_model(spec: ModelSpec, mean: np.ndarray, std: np.ndarray) -> tf.keras.Model:
    """The model of `spec` over standardized features, ending in the probability of the positive label.

    `mean` and `std` come from federated statistics and are constants of the model, not
    weights, so federated averaging only moves the coefficients. Initializers and dropout are
    seeded so that the same spec always starts from, and trains to, the same weights.
    """
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    inputs = tf.keras.Input(shape=(mean.shape[0],), dtype=tf.float32, name="features")
    hidden = tf.keras.layers.Normalization(mean=mean, variance=np.square(std), name="standardize")(inputs)
    if spec.kind == "logistic_regression":
        output_init = tf.keras.initializers.Zeros()
    elif spec.kind == "mlp":
        for layer, units in enumerate(spec.hidden_units, start=1):
            hidden = tf.keras.layers.Dense(
                units,
                activation="relu",
                name=f"hidden_{layer}",
                kernel_initializer=tf.keras.initializers.GlorotUniform(seed=spec.seed + layer),
            )(hidden)
            if spec.dropout > 0:
                hidden = tf.keras.layers.Dropout(spec.dropout, seed=spec.seed + 100 + layer, name=f"dropout_{layer}")(
                    hidden
                )
        output_init = tf.keras.initializers.GlorotUniform(seed=spec.seed)
    else:
        raise ValueError(f"unknown model kind {spec.kind!r}")
    probability = tf.keras.layers.Dense(
        1,
        activation="sigmoid",
        kernel_initializer=output_init,
        name="probability",
        bias_initializer=tf.keras.initializers.Constant(spec.initial_bias),
    )(hidden)
    return tf.keras.Model(inputs, probability, name=spec.kind)


class WeightedBinaryCrossentropy(tf.keras.losses.Loss):
    """Binary cross-entropy with positives weighted `positive_weight` times (rare defaults, fraud).

    The weight lives inside the loss because TFF's models reject sample-weighted losses.
    """

    def __init__(self, positive_weight: float = 1.0, name: str = "weighted_binary_crossentropy"):
        super().__init__(name=name)
        self.positive_weight = float(positive_weight)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, y_pred.dtype)
        p = tf.clip_by_value(y_pred, tf.keras.backend.epsilon(), 1.0 - tf.keras.backend.epsilon())
        per_output = -(self.positive_weight * y_true * tf.math.log(p) + (1.0 - y_true) * tf.math.log(1.0 - p))
        return tf.reduce_mean(per_output, axis=-1)

    def get_config(self) -> dict:
        return {"positive_weight": self.positive_weight, "name": self.name}


def export_model(weights: list[np.ndarray], spec: ModelSpec, mean: np.ndarray, std: np.ndarray, path: Path) -> Path:
    """Save the trained model (architecture, standardization and weights) as a .keras file."""
    model = build_model(spec, mean, std)
    model.set_weights(weights)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def load_model(path: Path) -> tf.keras.Model:
    """Load a model saved by `export_model`."""
    return tf.keras.models.load_model(Path(path), compile=False)


def predict_proba(model: tf.keras.Model, x: np.ndarray) -> np.ndarray:
    """Probability of the positive class for each raw row."""
    return model(np.asarray(x, dtype=np.float32), training=False).numpy().reshape(-1)
