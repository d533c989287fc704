"""Keras model builders. Standardization is a layer of the model, so it scores raw rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf


def build_logistic_regression(mean: np.ndarray, std: np.ndarray) -> tf.keras.Model:
    """Logistic regression (a scorecard) over standardized features.

    `mean` and `std` come from federated statistics and are constants of the model, not
    weights, so federated averaging only moves the coefficients.
    """
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    inputs = tf.keras.Input(shape=(mean.shape[0],), dtype=tf.float32, name="features")
    standardized = tf.keras.layers.Normalization(
        mean=mean, variance=np.square(std), name="standardize"
    )(inputs)
    probability = tf.keras.layers.Dense(
        1, activation="sigmoid", kernel_initializer="zeros", name="default_probability"
    )(standardized)
    return tf.keras.Model(inputs, probability, name="logistic_regression")


def export_model(weights: list[np.ndarray], mean: np.ndarray, std: np.ndarray, path: Path) -> Path:
    """Save the trained model (architecture, standardization and weights) as a .keras file."""
    model = build_logistic_regression(mean, std)
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
