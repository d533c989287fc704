"""Client data pipelines: one institution's arrays to the tf.data.Dataset TFF trains on."""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf


def element_spec(n_features: int) -> collections.OrderedDict:
    """The type of one batch, which TFF needs before it sees any data."""
    return collections.OrderedDict(
        x=tf.TensorSpec(shape=(None, n_features), dtype=tf.float32),
        y=tf.TensorSpec(shape=(None, 1), dtype=tf.float32),
    )


def client_dataset(x: np.ndarray, y: np.ndarray, *, batch_size: int, epochs: int, seed: int) -> tf.data.Dataset:
    """Shuffled (by `seed`), repeated `epochs` times and batched examples of one institution."""
    data = collections.OrderedDict(
        x=np.asarray(x, dtype=np.float32),
        y=np.asarray(y, dtype=np.float32).reshape(-1, 1),
    )
    dataset = tf.data.Dataset.from_tensor_slices(data)
    dataset = dataset.shuffle(len(data["x"]), seed=seed, reshuffle_each_iteration=False)
    return dataset.repeat(epochs).batch(batch_size)
