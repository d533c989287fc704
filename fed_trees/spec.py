"""What decides a tree ensemble (with the data and the seed): XGBoost's parameters as fedrisk sets them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TreeSpec:
    rounds: int = 300
    max_depth: int = 4
    learning_rate: float = 0.05
    min_child_weight: float = 5.0
    subsample: float = 1.0
    reg_lambda: float = 1.0
    max_bin: int = 256
    scale_pos_weight: float = 1.0
    early_stopping_rounds: int | None = 20
    feature_types: tuple[str, ...] = ()  # 'q' numeric, 'c' categorical (native), per column
    monotone: tuple[int, ...] = ()  # per column: 1 never lowers the risk, -1 never raises it, 0 free
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def params(self) -> dict:
        """XGBoost's training parameters: histogram method, logistic loss, log loss and AUC reported."""
        params = {
            "objective": "binary:logistic",
            "tree_method": "hist",
            "eval_metric": ["auc", "logloss"],
            "max_depth": self.max_depth,
            "eta": self.learning_rate,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "lambda": self.reg_lambda,
            "max_bin": self.max_bin,
            "scale_pos_weight": self.scale_pos_weight,
            "seed": self.seed,
            "nthread": 1,
        }
        if any(self.monotone):
            params["monotone_constraints"] = "(" + ",".join(str(int(m)) for m in self.monotone) + ")"
        return params

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, plain: dict) -> TreeSpec:
        plain = dict(plain)
        return cls(**{**plain, "feature_types": tuple(plain["feature_types"]), "monotone": tuple(plain["monotone"])})
