"""The registered model's MLflow pyfunc: raw rows (the schema's columns) -> the probability column.

Logged as an MLflow "model from code" with this package in its code paths, so scoring imports only
riskmodel, mlflow, pandas, numpy and the engine's runtime.
"""

from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd

from riskmodel import model as exported


class RiskModelPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]  # MLflow has no type information
    def load_context(self, context: Any) -> None:
        self.model = exported.load(context.artifacts["riskmodel"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        probability = self.model.predict_proba(model_input)
        return pd.DataFrame({self.model.output: probability}, index=model_input.index)


mlflow.models.set_model(RiskModelPyfunc())
