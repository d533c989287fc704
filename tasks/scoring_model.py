"""The registered model's pyfunc: raw rows (named columns) -> default probability.

Logged as an MLflow "model from code": MLflow stores this file with the model and runs it on
load, so it imports only what a scoring environment has (mlflow, pandas, numpy, tensorflow).
"""

import mlflow
import numpy as np
import pandas as pd


class FederatedCreditModel(mlflow.pyfunc.PythonModel):
    """A Keras model with standardization baked in, fed the configured features in training order."""

    def load_context(self, context):
        import tensorflow as tf

        self.model = tf.keras.models.load_model(context.artifacts["keras_model"], compile=False)
        self.features = list(context.model_config["feature_order"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        x = model_input[self.features].to_numpy(dtype=np.float32)
        probability = self.model(x, training=False).numpy().reshape(-1)
        return pd.DataFrame({"default_probability": probability}, index=model_input.index)


mlflow.models.set_model(FederatedCreditModel())
