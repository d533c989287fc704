"""The scorecard form of a logistic regression: points instead of log-odds, as credit-risk teams use.

score = offset - factor * logit, with factor = PDO / ln 2 and offset = base_score - factor * ln(base_odds):
`points_to_double_odds` more points double the odds of good to bad, and `base_score` points mean odds
of `base_odds` to 1. The model is linear in its (standardized, encoded) inputs, so each input column has
a points slope and each feature's points add up to the score. A row's reason codes are the features
that cost it the most points against the consortium's average applicant (the model's own means).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from riskmodel.model import RiskModel
from riskmodel.scaling import Scaling

POINTS_TABLE_ARTIFACT = "scorecard/points_table.csv"


def _scaling(model: RiskModel) -> Scaling:
    if model.engine != "keras" or model.scaling is None:
        raise ValueError("a points scorecard needs a logistic regression model")
    return model.scaling


def _linear(model: RiskModel) -> tuple[np.ndarray, float, np.ndarray]:
    """(slope per encoded column, bias, column means) of a Keras logistic regression: logit = bias + slope . x."""
    _scaling(model)
    standardize = model.predictor.get_layer("standardize")  # constants of the model, not weights
    mean = np.asarray(standardize.mean, dtype=np.float64).reshape(-1)
    std = np.sqrt(np.asarray(standardize.variance, dtype=np.float64)).reshape(-1)
    kernel, bias = model.predictor.get_layer("probability").get_weights()
    slope = np.asarray(kernel, dtype=np.float64).reshape(-1) / std
    intercept = float(bias[0]) - float(np.sum(slope * mean))
    return slope, intercept, mean


def points_table(model: RiskModel) -> pd.DataFrame:
    """Base points, then points per unit of each numeric input and per level of each categorical one."""
    scaling = _scaling(model)
    slope, intercept, _ = _linear(model)
    points = -scaling.factor * slope
    rows = [{"feature": "(base points)", "attribute": "", "points": scaling.offset - scaling.factor * intercept}]
    position = 0
    for f in model.layout.features:
        for column in f.columns():
            attribute = column.split("=", 1)[1] if "=" in column else "per unit"
            rows.append({"feature": f.name, "attribute": attribute, "points": float(points[position])})
            position += 1
    return pd.DataFrame(rows)


def score_points(model: RiskModel, frame: pd.DataFrame, reasons: int = 0) -> pd.DataFrame:
    """Each row's score points and, given `reasons`, the features that cost it the most points
    against the average applicant (reason_1 the largest), with the points each cost."""
    scaling = _scaling(model)
    slope, intercept, mean = _linear(model)
    points = -scaling.factor * slope
    x = model.layout.encode(frame)
    out = pd.DataFrame(index=frame.index)
    out["score_points"] = np.round(scaling.offset - scaling.factor * intercept + x @ points, 1)
    if reasons:
        columns: list[np.ndarray] = []
        names: list[str] = []
        position = 0
        for f in model.layout.features:
            width = len(f.columns())
            part = slice(position, position + width)
            columns.append(mean[part] @ points[part] - x[:, part] @ points[part])
            names.append(f.name)
            position += width
        lost = np.column_stack(columns)
        order = np.argsort(-lost, axis=1, kind="stable")[:, :reasons]
        for k in range(min(reasons, len(names))):
            chosen = order[:, k]
            cost = lost[np.arange(len(frame)), chosen]
            out[f"reason_{k + 1}"] = np.where(cost > 0, np.array(names, dtype=object)[chosen], "")
            out[f"reason_{k + 1}_points"] = np.where(cost > 0, np.round(cost, 1), 0.0)
    return out
