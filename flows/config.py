"""The run config: one typed, validated description of a retraining (YAML -> pydantic)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.schema import FEATURE_COLUMNS, ID_COLUMN, LABEL_COLUMN

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
PromotionMetric = Literal["roc_auc", "ks", "log_loss", "brier"]


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, field and value."""


class InstitutionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Institution id (lowercase).")
    path: Path = Field(description="Its extract (CSV); relative paths are relative to the config file.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Column renames for this institution: name in its file -> schema name."
    )


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(10, ge=1, le=10_000, description="Federated rounds.")
    local_epochs: int = Field(1, ge=1, le=100, description="Epochs each institution trains per round.")
    batch_size: int = Field(64, ge=1, le=65_536)
    # Plain SGD on standardized features: 0.05 is stable for logistic regression; the server
    # applies the averaged update as is (lr 1.0 = classic FedAvg).
    client_learning_rate: float = Field(0.05, gt=0, le=10)
    server_learning_rate: float = Field(1.0, gt=0, le=10)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(pattern=NAME_PATTERN, description="Registered model name in MLflow.")
    suite: str = Field("credit_default_v1", description="GX expectation suite for the input schema.")
    institutions: list[InstitutionConfig] = Field(min_length=1)
    label: str = LABEL_COLUMN
    features: list[str] = Field(default_factory=lambda: list(FEATURE_COLUMNS), min_length=1)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    holdout_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="Stratified share each institution holds out.")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    quorum: int = Field(1, ge=1, description="Minimum institutions that must pass validation.")
    quorum_row_share: float = Field(
        0.0, ge=0.0, le=1.0, description="Minimum share of all reported rows the passing institutions must hold."
    )
    promotion_metric: PromotionMetric = "roc_auc"
    drift_checks: bool = Field(
        True, description="Check each extract against the institution's last accepted one; turn off "
                          "once to accept a deliberate change (a new portfolio, a re-based currency).",
    )

    @field_validator("label")
    @classmethod
    def _known_label(cls, label: str) -> str:
        if label != LABEL_COLUMN:
            raise ValueError(f"the credit-default schema's label is '{LABEL_COLUMN}'")
        return label

    @field_validator("features")
    @classmethod
    def _known_features(cls, features: list[str]) -> list[str]:
        unknown = [f for f in features if f not in FEATURE_COLUMNS]
        if unknown:
            raise ValueError(f"not features of the schema: {unknown} (features are {FEATURE_COLUMNS}; "
                             f"{ID_COLUMN} and the label are not features)")
        if len(set(features)) != len(features):
            raise ValueError("features are listed more than once")
        return features

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        names = [i.name for i in self.institutions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"institution names must be unique; repeated: {duplicates}")
        if self.quorum > len(self.institutions):
            raise ValueError(f"quorum {self.quorum} is more than the {len(self.institutions)} institutions configured")
        return self


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        value = item.get("input")
        shown = "" if isinstance(value, dict) or item["type"] == "missing" else f" (got {value!r})"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)


def parse_config(data: dict, base_dir: Path, source: str = "<dict>") -> RunConfig:
    """Validate a config mapping; resolve institution paths against `base_dir`."""
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None
    for institution in config.institutions:
        if not institution.path.is_absolute():
            institution.path = (base_dir / institution.path).resolve()
    return config


def load_config(path: Path) -> RunConfig:
    """Read and validate a YAML run config."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} cannot be read: {error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of settings, got {type(data).__name__}")
    return parse_config(data, path.resolve().parent, str(path))
