import numpy as np
import pytest
import tensorflow as tf

from fed_models.keras_models import (
    ModelSpec,
    WeightedBinaryCrossentropy,
    build_model,
    export_model,
    load_model,
    predict_proba,
)

LR = ModelSpec()


def test_exported_model_scores_raw_rows_with_standardization_baked_in(tmp_path):
    mean, std = np.array([100.0, 5.0]), np.array([20.0, 0.5])
    weights = [np.array([[0.8], [-1.2]], dtype=np.float32), np.array([0.3], dtype=np.float32)]
    path = export_model(weights, LR, mean, std, tmp_path / "m.keras")
    raw = np.array([[120.0, 5.0], [80.0, 6.0], [100.0, 4.5]])
    expected = 1 / (1 + np.exp(-(((raw - mean) / std) @ weights[0].ravel() + 0.3)))
    np.testing.assert_allclose(predict_proba(load_model(path), raw), expected, rtol=1e-5)


def test_only_coefficients_are_weights():
    model = build_model(LR, np.zeros(4), np.ones(4))
    assert [w.shape for w in model.trainable_weights] == [(4, 1), (1,)]
    assert model.non_trainable_weights == []


def test_mlp_has_the_configured_layers_seeded_init_and_inference_without_dropout(tmp_path):
    spec = ModelSpec("mlp", (32, 16), dropout=0.5, seed=3)
    model = build_model(spec, np.zeros(23), np.ones(23))
    assert [w.shape for w in model.trainable_weights] == [(23, 32), (32,), (32, 16), (16,), (16, 1), (1,)]
    again = build_model(spec, np.zeros(23), np.ones(23))
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).normal(size=(5, 23))
    path = export_model(model.get_weights(), spec, np.zeros(23), np.ones(23), tmp_path / "mlp.keras")
    scored = predict_proba(load_model(path), x)
    np.testing.assert_array_equal(scored, predict_proba(load_model(path), x))  # dropout off when scoring
    np.testing.assert_allclose(scored, predict_proba(model, x), rtol=1e-6)


def test_weighted_loss_multiplies_the_positive_terms():
    y = np.array([[1.0], [0.0], [1.0]], dtype=np.float32)
    p = np.array([[0.8], [0.3], [0.4]], dtype=np.float32)
    expected = -np.mean([4 * np.log(0.8), np.log(0.7), 4 * np.log(0.4)])
    assert float(WeightedBinaryCrossentropy(4.0)(y, p)) == pytest.approx(expected, rel=1e-5)
    assert float(WeightedBinaryCrossentropy(1.0)(y, p)) == pytest.approx(
        float(tf.keras.losses.BinaryCrossentropy()(y, p)), rel=1e-5
    )
