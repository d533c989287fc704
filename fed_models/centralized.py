"""Centralized training of the federated model's architecture: the local-only and pooled baselines."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from fed_models.keras_models import ModelSpec, WeightedBinaryCrossentropy, build_model


def train_centralized(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_validation: np.ndarray,
    y_validation: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    spec: ModelSpec,
    *,
    max_epochs: int,
    patience: int,
    batch_size: int,
    learning_rate: float,
    positive_weight: float = 1.0,
) -> list[np.ndarray]:
    """The weights of `spec` trained with Adam on one dataset, stopped early on the validation loss
    (best epoch kept); save them with `export_model`.

    The loss is the federated one (positives weighted `positive_weight` times), so a baseline
    differs from the federated model only in where its data sits.
    """
    tf.keras.utils.set_random_seed(spec.seed)
    model = build_model(spec, mean, std)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate), loss=WeightedBinaryCrossentropy(positive_weight))
    stop = tf.keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
    model.fit(
        np.asarray(x_fit, np.float32),
        np.asarray(y_fit, np.float32).reshape(-1, 1),
        validation_data=(np.asarray(x_validation, np.float32), np.asarray(y_validation, np.float32).reshape(-1, 1)),
        epochs=max_epochs,
        batch_size=batch_size,
        verbose=0,
        callbacks=[stop],
        shuffle=True,
    )
    return model.get_weights()
