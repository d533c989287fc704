"""DP-SGD in each institution's local training: clipping bounds every customer's pull, the TFF client
work does exactly the DP-SGD steps it claims (noise included), and steps are Poisson samples."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from fed_models import runtime
from fed_models.dp_sgd import (
    NOISE_SEED,
    NOISE_STDDEV,
    build_dp_sgd_client_work,
    clipped_gradient_sum_dense,
    clipped_gradient_sum_jacobian,
    is_dense_stack,
    poisson_steps,
)
from fed_models.keras_models import ModelSpec, WeightedBinaryCrossentropy, build_model

FEATURES = 5
LOSS = WeightedBinaryCrossentropy(2.0).call


def _batch(rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    y = (rng.random((rows, 1)) < 0.4).astype(np.float32)
    return x, y


def _model(spec: ModelSpec) -> tf.keras.Model:
    model = build_model(spec, np.zeros(FEATURES), np.ones(FEATURES))
    rng = np.random.default_rng(1)  # weights away from zero, so gradients differ per example
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in model.get_weights()])
    return model


SPECS = [ModelSpec(), ModelSpec("mlp", (8, 4), 0.0)]


@pytest.mark.parametrize("spec", SPECS, ids=["logistic_regression", "mlp"])
def test_no_single_example_moves_the_clipped_sum_by_more_than_the_clip_norm(spec):
    model = _model(spec)
    x, y = _batch(32)
    x[7] *= 4.0  # a customer far from the others
    clip = 0.1

    def pull(clip_norm: float) -> list[float]:
        """How far each example moves the batch's gradient sum: the sum with it minus the sum without it."""

        def total(rows):
            return np.concatenate(
                [np.ravel(t) for t in clipped_gradient_sum_dense(model, x[rows], y[rows], LOSS, clip_norm)]
            )

        everyone = total(np.arange(32))
        return [float(np.linalg.norm(everyone - total(np.delete(np.arange(32), j)))) for j in range(32)]

    assert max(pull(clip)) <= clip * (1 + 1e-5)
    unclipped = pull(1e9)
    assert sum(p > clip for p in unclipped) > 16 and max(unclipped) > 10 * clip  # the bound is doing the work


@pytest.mark.parametrize("spec", [*SPECS, ModelSpec("mlp", (6,), 0.3)], ids=["logistic_regression", "mlp", "dropout"])
def test_the_fast_dense_path_equals_clipping_every_examples_full_gradient(spec):
    model = _model(ModelSpec(spec.kind, spec.hidden_units, 0.0))
    assert is_dense_stack(model) and is_dense_stack(build_model(spec, np.zeros(FEATURES), np.ones(FEATURES)))
    x, y = _batch(16)
    x[3] *= 50.0
    for clip in (0.05, 1.0, 1e9):
        fast = clipped_gradient_sum_dense(model, x, y, LOSS, clip)
        full = clipped_gradient_sum_jacobian(lambda: LOSS(y, model(x, training=True)), model.trainable_variables, clip)
        for a, b in zip(fast, full, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    empty = clipped_gradient_sum_dense(model, x[:0], y[:0], LOSS, 1.0)
    assert all(not np.any(t) for t in empty)


def test_poisson_steps_sample_each_row_independently_at_the_batch_rate():
    x, y = np.arange(2000, dtype=np.float32).reshape(1000, 2), np.ones(1000)
    steps = list(poisson_steps(x, y, batch_size=50, steps=400, noise_stddev=0.7, rng=np.random.default_rng(5)))
    sizes = np.array([len(s["x"]) for s in steps])
    assert abs(sizes.mean() - 50) < 1.5 and abs(sizes.std() - np.sqrt(1000 * 0.05 * 0.95)) < 1.5  # Binomial(1000, 0.05)
    for step in steps[:20]:
        rows = step["x"].numpy()[:, 0] / 2
        assert len(set(rows)) == len(rows) and np.all(rows == np.round(rows))  # real rows, none twice in a step
        assert float(step[NOISE_STDDEV]) == pytest.approx(0.7)
    assert len({tuple(s[NOISE_SEED].numpy()) for s in steps}) == 400


def _client_work(spec: ModelSpec, **settings):
    """The model builder, DP-SGD client work over it, and its initial weights."""

    def keras_model():
        return build_model(spec, np.zeros(FEATURES), np.ones(FEATURES))

    @tff.tensorflow.computation()
    def initial():
        model = keras_model()
        return tff.learning.models.ModelWeights(trainable=list(model.trainable_variables), non_trainable=[])

    work = build_dp_sgd_client_work(keras_model, LOSS, initial.type_signature.result, n_features=FEATURES, **settings)
    return keras_model, work, initial()


def test_the_tff_client_update_is_exactly_the_dp_sgd_steps_with_their_noise():
    """Replay the client's steps by hand (same Poisson samples, same noise seeds): same update."""
    runtime.ensure_context()
    spec = ModelSpec("mlp", (4,), 0.0)
    x, y = _batch(300, seed=2)
    lr, clip, batch, stddev = 0.3, 0.8, 32, 1.5

    keras_model, work, start = _client_work(spec, learning_rate=lr, clip_norm=clip, batch_size=batch)
    data = poisson_steps(x, y, batch_size=batch, steps=12, noise_stddev=stddev, rng=np.random.default_rng(9))
    [result] = work.next(work.initialize(), [start], [data]).result

    model = keras_model()
    model.set_weights(start.trainable)
    for step in data:
        sums = clipped_gradient_sum_dense(model, step["x"], step["y"], LOSS, clip)
        for index, (variable, total) in enumerate(zip(model.trainable_variables, sums, strict=True)):
            seed = tf.random.experimental.stateless_fold_in(step[NOISE_SEED], index)
            noise = tf.random.stateless_normal(variable.shape, seed=seed) * step[NOISE_STDDEV]
            variable.assign_sub(lr * (total + noise) / batch)
    for sent, start_w, end_w in zip(result.update, start.trainable, model.get_weights(), strict=True):
        np.testing.assert_allclose(sent, start_w - end_w, rtol=1e-4, atol=1e-6)
    assert result.update_weight == 12 * batch  # steps x expected sample: not the sizes actually drawn


def test_an_empty_sample_still_adds_its_noise():
    runtime.ensure_context()
    _, work, start = _client_work(ModelSpec(), learning_rate=1.0, clip_norm=1.0, batch_size=8)
    x, y = _batch(1000)
    empty = poisson_steps(x[:1], y[:1], batch_size=1e-9, steps=3, noise_stddev=2.0, rng=np.random.default_rng(0))
    assert [len(s["x"]) for s in empty] == [0, 0, 0]
    [result] = work.next(work.initialize(), [start], [empty]).result
    # Weighted as the expected sample (3 steps of 8), whatever was drawn; the noise moved every weight.
    assert result.update_weight == 24 and all(np.any(u) for u in result.update)
