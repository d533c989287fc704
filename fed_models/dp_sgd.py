"""Record-level differential privacy in each institution's local training: DP-SGD as TFF client work.

Every local step takes a Poisson sample of the institution's rows (each row independently with
probability batch / n), computes each sampled example's gradient, clips it to L2 norm `clip_norm`,
sums, adds Gaussian noise of stddev `noise_multiplier * clip_norm` and divides by the expected
batch size (Abadi et al. 2016). One customer can then move the update an institution sends by at
most clip_norm * learning_rate / batch per step, under noise: what fed_models.accounting accounts.

The sampling and the noise come from the operating system's entropy, drawn where the rows are;
a seed written in the run config would let anyone who reads it subtract the noise. Runs with DP
are therefore not reproducible bit for bit, by design.

Training-set metrics (loss, AUC on the sampled rows) are not computed: they are not noised, so
releasing them would fall outside the guarantee. Convergence is followed on the federated
validation split, which is never trained on.
"""

from __future__ import annotations

import collections
import secrets

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fed_models.client_data import element_spec

NOISE_SEED, NOISE_STDDEV = "noise_seed", "noise_stddev"


def dp_element_spec(n_features: int) -> collections.OrderedDict:
    """One DP-SGD step's input: the Poisson-sampled rows, its noise seed and the noise stddev."""
    spec = element_spec(n_features)
    spec[NOISE_SEED] = tf.TensorSpec(shape=(2,), dtype=tf.int64)
    spec[NOISE_STDDEV] = tf.TensorSpec(shape=(), dtype=tf.float32)
    return spec


def secure_rng() -> np.random.Generator:
    """A generator seeded from the operating system's entropy (never from the run's seed)."""
    return np.random.default_rng(secrets.randbits(128))


def poisson_steps(
    x: np.ndarray, y: np.ndarray, *, batch_size: int, steps: int, noise_stddev: float, rng: np.random.Generator
) -> tf.data.Dataset:
    """`steps` DP-SGD steps over one institution's rows: each a Poisson sample (rate batch_size / n).

    A Poisson sample is a Binomial(n, q) number of rows chosen uniformly without replacement.
    """
    n = len(x)
    q = min(1.0, batch_size / n)
    sizes = rng.binomial(n, q, size=steps)
    chosen = np.concatenate([rng.choice(n, size=k, replace=False) for k in sizes]) if steps else np.zeros(0, int)
    rows = collections.OrderedDict(
        x=tf.RaggedTensor.from_row_lengths(np.asarray(x, np.float32)[chosen], sizes),
        y=tf.RaggedTensor.from_row_lengths(np.asarray(y, np.float32).reshape(-1, 1)[chosen], sizes),
    )
    rows[NOISE_SEED] = rng.integers(0, 2**62, size=(steps, 2), dtype=np.int64)
    rows[NOISE_STDDEV] = np.full(steps, noise_stddev, dtype=np.float32)

    def dense(step):  # each step's rows come out as a plain (k, features) tensor
        return collections.OrderedDict(
            (key, value.to_tensor() if isinstance(value, tf.RaggedTensor) else value) for key, value in step.items()
        )

    return tf.data.Dataset.from_tensor_slices(rows).map(dense)


def _clip_scale(norms: tf.Tensor, clip_norm: float) -> tf.Tensor:
    return tf.minimum(1.0, clip_norm / tf.maximum(norms, 1e-12))


def clipped_gradient_sum_jacobian(per_example_loss_fn, variables, clip_norm: float) -> list[tf.Tensor]:
    """The sum over a batch of each example's gradient clipped to L2 norm `clip_norm`, for any model:
    every example's gradient is computed (vectorized) and clipped.

    `per_example_loss_fn()` returns one loss per example (computed under the tape here).
    """
    with tf.GradientTape() as tape:
        losses = per_example_loss_fn()
    count = tf.shape(losses)[0]

    def clipped():
        jacobians = tape.jacobian(losses, variables, experimental_use_pfor=True)
        norms = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.reshape(j, [count, -1])), axis=1) for j in jacobians]))
        scale = _clip_scale(norms, clip_norm)
        return [tf.tensordot(scale, j, axes=1) for j in jacobians]

    def empty():  # a Poisson sample may be empty: the step still adds its noise
        return [tf.zeros_like(v) for v in variables]

    return tf.cond(count > 0, clipped, empty)


def is_dense_stack(model: tf.keras.Model) -> bool:
    """Whether every trainable weight of `model` is a Dense layer's kernel or bias (fedrisk's models are)."""
    dense = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Dense)]
    owned = {id(v) for layer in dense for v in (layer.kernel, layer.bias) if v is not None}
    return (
        all(layer.use_bias for layer in dense)
        and all(id(v) in owned for v in model.trainable_variables)
        and all(
            isinstance(
                layer,
                (
                    tf.keras.layers.Dense,
                    tf.keras.layers.InputLayer,
                    tf.keras.layers.Dropout,
                    tf.keras.layers.Normalization,
                ),
            )
            for layer in model.layers
        )
    )


def clipped_gradient_sum_dense(model: tf.keras.Model, x, y, loss_fn, clip_norm: float) -> list[tf.Tensor]:
    """The same clipped sum as `clipped_gradient_sum_jacobian`, for a stack of Dense layers, at the cost
    of about two ordinary backward passes (Goodfellow 2015): a Dense layer's per-example kernel gradient
    is the outer product of its input row and the gradient at its output row, so its norm is the
    product of theirs, and the clipped sum is one matrix product with the rows scaled.
    """
    records = []  # (layer, its input, its pre-activation output)
    with tf.GradientTape() as tape:
        a = x
        for layer in model.layers:
            if isinstance(layer, tf.keras.layers.InputLayer):
                continue
            if isinstance(layer, tf.keras.layers.Dense):
                z = tf.matmul(a, layer.kernel) + layer.bias
                records.append((layer, a, z))
                a = layer.activation(z)
            else:
                a = layer(a, training=True)
        # Each loss depends on its own row only, so the gradient of their sum holds every row's gradient.
        total = tf.reduce_sum(loss_fn(y, a))
    outputs = tape.gradient(total, [z for _, _, z in records])
    squared = tf.add_n(
        [
            (tf.reduce_sum(tf.square(a), axis=1) + 1.0) * tf.reduce_sum(tf.square(g), axis=1)
            for (_, a, _), g in zip(records, outputs, strict=True)
        ]
    )
    scale = _clip_scale(tf.sqrt(squared), clip_norm)[:, None]
    sums = {}
    for (layer, a, _), g in zip(records, outputs, strict=True):
        sums[id(layer.kernel)] = tf.matmul(a, scale * g, transpose_a=True)
        sums[id(layer.bias)] = tf.reduce_sum(scale * g, axis=0)
    return [sums[id(v)] for v in model.trainable_variables]


def build_dp_sgd_client_work(
    keras_model_fn, loss_fn, weights_type, *, learning_rate: float, clip_norm: float, batch_size: int, n_features: int
) -> tff.learning.templates.ClientWorkProcess:
    """TFF client work: DP-SGD steps from the global weights. The update is the weight delta (global
    minus local, as TFF's server optimizers expect), weighted by the expected number of examples
    sampled (steps * batch_size: public, unlike the sample sizes drawn).
    `keras_model_fn()` builds the model, `loss_fn(y, p)` returns per-example losses. A non-finite
    update is sent as zeros with weight 0."""
    data_type = tff.SequenceType(
        tff.StructWithPythonType(
            [
                (name, tff.TensorType(spec.dtype.as_numpy_dtype, spec.shape.as_list()))
                for name, spec in dp_element_spec(n_features).items()
            ],
            collections.OrderedDict,
        )
    )

    def train_locally(model, initial, dataset):
        weights = tff.learning.models.ModelWeights(
            trainable=list(model.trainable_variables), non_trainable=list(model.non_trainable_variables)
        )
        tf.nest.map_structure(lambda v, t: v.assign(t), weights, initial)
        trainable = list(weights.trainable)
        dense = is_dense_stack(model)

        def clipped_sum(x, y):
            if dense:
                return clipped_gradient_sum_dense(model, x, y, loss_fn, clip_norm)
            return clipped_gradient_sum_jacobian(lambda: loss_fn(y, model(x, training=True)), trainable, clip_norm)

        def step(examples, batch):
            sums = clipped_sum(batch["x"], batch["y"])
            for index, (variable, total) in enumerate(zip(trainable, sums, strict=True)):
                seed = tf.random.experimental.stateless_fold_in(batch[NOISE_SEED], index)
                noise = tf.random.stateless_normal(tf.shape(variable), seed=seed, dtype=variable.dtype)
                variable.assign_sub(learning_rate * (total + noise * batch[NOISE_STDDEV]) / float(batch_size))
            return examples + batch_size  # the expected sample: the actual size would leak a row's presence

        examples = dataset.reduce(tf.constant(0, tf.int64), step)
        update = [start - end for start, end in zip(list(initial.trainable), trainable, strict=True)]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(u)) for u in update])
        update = [tf.where(finite, u, tf.zeros_like(u)) for u in update]
        weight = tf.where(finite, tf.cast(examples, tf.float32), 0.0)
        return tff.learning.templates.ClientResult(update=update, update_weight=weight), examples

    @tff.tensorflow.computation(weights_type, data_type)
    def client_update(initial, dataset):
        # A tf.function orders the variable updates before the final read, as TFF's own client work does.
        return tf.function(train_locally)(keras_model_fn(), initial, dataset)

    @tff.federated_computation()
    def initialize():
        return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(
        initialize.type_signature.result,
        tff.FederatedType(weights_type, tff.CLIENTS),
        tff.FederatedType(data_type, tff.CLIENTS),
    )
    def next_fn(state, weights, data):
        result, examples = tff.federated_map(client_update, (weights, data))
        measurements = tff.federated_zip(
            collections.OrderedDict(train=collections.OrderedDict(num_examples=tff.federated_sum(examples)))
        )
        return tff.templates.MeasuredProcessOutput(state, result, measurements)

    return tff.learning.templates.ClientWorkProcess(initialize, next_fn)
