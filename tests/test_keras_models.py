import numpy as np

from fed_models.keras_models import build_logistic_regression, export_model, load_model, predict_proba


def test_exported_model_scores_raw_rows_with_standardization_baked_in(tmp_path):
    mean, std = np.array([100.0, 5.0]), np.array([20.0, 0.5])
    weights = [np.array([[0.8], [-1.2]], dtype=np.float32), np.array([0.3], dtype=np.float32)]
    path = export_model(weights, mean, std, tmp_path / "m.keras")
    raw = np.array([[120.0, 5.0], [80.0, 6.0], [100.0, 4.5]])
    expected = 1 / (1 + np.exp(-(((raw - mean) / std) @ weights[0].ravel() + 0.3)))
    np.testing.assert_allclose(predict_proba(load_model(path), raw), expected, rtol=1e-5)


def test_only_coefficients_are_weights():
    model = build_logistic_regression(np.zeros(4), np.ones(4))
    assert [w.shape for w in model.trainable_weights] == [(4, 1), (1,)]
    assert model.non_trainable_weights == []
