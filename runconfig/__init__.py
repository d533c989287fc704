"""Types of the run config: one typed, validated description of a retraining, passed down to every task.

flows.config reads it from YAML at the edge; the tasks take these values as they are."""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from contract.schema import SCHEMAS_DIR, Schema, load_schema


def _positive_weight(value: float | str) -> float | str:
    if not isinstance(value, str) and not 0 < value <= 10_000:
        raise ValueError("must be 'balanced' or a number in (0, 10000]")
    return value


# The loss weight of a positive (default, fraud): a number, or 'balanced' from the federated counts.
PositiveClassWeight = Annotated[float | Literal["balanced"], AfterValidator(_positive_weight)]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
PromotionMetric = Literal[
    "roc_auc", "pr_auc", "ks", "gini", "log_loss", "brier", "ece", "recall_at_fpr", "recall_at_alert_rate"
]


class InstitutionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Institution id (lowercase).")
    path: Path | None = Field(
        None, description="Simulation: its extract (CSV or Parquet); relative paths are relative to the config file."
    )
    node: str | None = Field(
        None,
        pattern=r"^[^:\s]+:\d{1,5}$",
        description="Cross-silo: host:port of its fedrisk node (the coordinator has no path to its data).",
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Column renames for this institution: name in its file -> schema name."
    )
    monitoring_path: Path | None = Field(
        None,
        description="Simulation: this period's extract of its scoring population, on which `fedrisk monitor` checks "
        "the champion (with the label column once outcomes have matured); relative to the config file.",
    )
    privacy_budget: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="Total epsilon this institution allows over every model trained on its "
        "rows (the ledger); overrides privacy.budget_epsilon.",
    )

    @model_validator(mode="after")
    def _path_or_node(self) -> InstitutionConfig:
        if (self.path is None) == (self.node is None):
            raise ValueError(f"institution '{self.name}' needs exactly one of path (simulation) or node (cross-silo)")
        if self.columns and self.node:
            raise ValueError(f"institution '{self.name}': a node maps its own columns (in its node config)")
        if self.monitoring_path and self.node:
            raise ValueError(
                f"institution '{self.name}': monitoring_path is for simulation; a node's extract is the node's to read"
            )
        return self


class TlsConfig(BaseModel):
    """The coordinator's TLS material (PEM): the consortium CA, its certificate and key."""

    model_config = ConfigDict(extra="forbid")

    ca: Path
    cert: Path
    key: Path
    host: str = Field(
        "localhost",
        description="This coordinator's name as the nodes reach it (its certificate names "
        "it): XGBoost's federated server, for engine: xgboost.",
    )
    trees_bind: str = Field(
        "",
        description="The IP address of this host that the admission gate to XGBoost's "
        "federated server listens on; default: the address `host` resolves to.",
    )

    @field_validator("trees_bind")
    @classmethod
    def _ip(cls, value: str) -> str:
        if value:
            ipaddress.ip_address(value)  # a ValueError names the field
        return value


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["logistic_regression", "mlp"] = Field(
        "logistic_regression", description="logistic_regression (a scorecard) or mlp."
    )
    hidden_units: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=list, max_length=8, description="MLP hidden layer sizes, e.g. [32, 16]."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="MLP dropout after each hidden layer.")

    @model_validator(mode="after")
    def _layers_match_kind(self) -> ModelConfig:
        if self.kind == "mlp" and not self.hidden_units:
            raise ValueError("an mlp needs hidden_units, e.g. [32, 16]")
        if self.kind == "logistic_regression" and (self.hidden_units or self.dropout):
            raise ValueError("a logistic_regression has no hidden_units or dropout; use kind: mlp")
        return self


class EarlyStoppingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patience: int = Field(5, ge=1, le=10_000, description="Rounds without validation-loss improvement before stopping.")
    min_delta: float = Field(0.0, ge=0.0, description="Smallest validation-loss decrease that counts as improvement.")


class ScheduleConfig(BaseModel):
    """How a round waits for slow institutions (across silos): every one (synchronous), until a deadline, or
    not at all (buffered asynchronous aggregation)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["synchronous", "deadline", "buffered"] = Field(
        "synchronous",
        description="synchronous: each round waits for every sampled institution. deadline: a round closes at "
        "deadline_seconds once min_share of the fit rows reported; a late update counts in a later round "
        "(late_updates). buffered: FedBuff, a server step per buffer_size updates, institutions never wait.",
    )
    deadline_seconds: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="deadline: seconds a round waits for updates after it starts.",
    )
    min_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="deadline: the share of the consortium's fit rows whose updates must have arrived before a "
        "round closes (it waits past the deadline until they have).",
    )
    late_updates: Literal["drop", "discount"] = Field(
        "discount",
        description="deadline: an update that missed its round is dropped, or applied in the round it arrives in "
        "with its weight discounted by staleness.",
    )
    staleness_exponent: float = Field(
        0.5,
        ge=0,
        le=10,
        description="An update s model versions old weighs 1/(1+s)^a of a fresh one (FedBuff's polynomial).",
    )
    max_staleness: int = Field(4, ge=0, le=1000, description="Updates older than this many versions are dropped.")
    buffer_size: int = Field(
        2, ge=1, le=10_000, description="buffered: updates that make one server step (FedBuff's K)."
    )

    @model_validator(mode="after")
    def _settings(self) -> ScheduleConfig:
        if self.mode == "deadline" and self.deadline_seconds is None:
            raise ValueError("training.schedule.mode deadline needs deadline_seconds (e.g. 30)")
        return self


# Server learning rate when none is configured: plain SGD applies the averaged update as is
# (1.0 = classic FedAvg); adaptive optimizers take normalized steps and need small rates.
DEFAULT_SERVER_LEARNING_RATE = {"fedavg": 1.0, "fedprox": 1.0, "fedadam": 0.01, "fedyogi": 0.01, "fedadagrad": 0.1}


class TrainingConfig(BaseModel):
    """The TFF engine: neural models (logistic regression, MLP) trained by federated averaging and its kin."""

    model_config = ConfigDict(extra="forbid")
    supports_privacy: ClassVar[bool] = True  # differential privacy (record or client level)
    supports_secure_aggregation: ClassVar[bool] = True

    engine: Literal["tff"] = "tff"
    algorithm: Literal["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"] = Field(
        "fedavg", description="Federated algorithm: server optimizer SGD (fedavg, fedprox) or adaptive."
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    rounds: int = Field(10, ge=1, le=10_000, description="Maximum federated rounds.")
    local_epochs: int = Field(1, ge=1, le=100, description="Epochs each institution trains per round.")
    batch_size: int = Field(64, ge=1, le=65_536)
    # Plain SGD on standardized features: 0.05 is stable for logistic regression and MLPs.
    client_learning_rate: float = Field(0.05, gt=0, le=10)
    server_learning_rate: float | None = Field(
        None,
        gt=0,
        le=10,
        description="Default by algorithm: 1.0 for fedavg/fedprox, 0.01 for fedadam/fedyogi, 0.1 for fedadagrad.",
    )
    proximal_strength: float = Field(0.0, ge=0, le=100, description="FedProx mu; required (> 0) for fedprox.")
    clients_per_round: int | None = Field(
        None, ge=1, description="Institutions sampled (seeded) each round; all when unset."
    )
    clients_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="The share of institutions sampled (seeded) each round, rounded up; instead of clients_per_round.",
    )
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig, description="How a round waits for slow institutions (across silos)."
    )
    positive_class_weight: PositiveClassWeight = Field(
        1.0,
        description="Weight of a default/fraud in the loss; 'balanced' = negatives/positives over all "
        "institutions (from federated counts).",
    )
    aggregation: Literal["robust", "plain", "compression"] = Field(
        "robust",
        description="robust: drop non-finite updates, adaptive zeroing and clipping; compression: "
        "robust + 8-bit quantized updates; plain: bare weighted mean.",
    )
    validation_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Share of each institution's training split held for federated validation."
    )
    early_stopping: EarlyStoppingConfig | None = Field(
        None,
        description="Stop when the federated validation loss stops improving; the best round is exported either way.",
    )

    @model_validator(mode="after")
    def _algorithm_settings(self) -> TrainingConfig:
        if self.algorithm == "fedprox" and self.proximal_strength <= 0:
            raise ValueError("fedprox needs proximal_strength > 0 (e.g. 0.01)")
        if self.algorithm != "fedprox" and self.proximal_strength > 0:
            raise ValueError(f"proximal_strength applies to fedprox only, not {self.algorithm}")
        if self.server_learning_rate is None:
            self.server_learning_rate = DEFAULT_SERVER_LEARNING_RATE[self.algorithm]
        if self.clients_per_round is not None and self.clients_fraction is not None:
            raise ValueError("set clients_per_round or clients_fraction, not both")
        return self

    def sampled(self, institutions: int) -> int | None:
        """Institutions sampled per round out of `institutions` (None: all)."""
        if self.clients_fraction is not None:
            return min(institutions, math.ceil(self.clients_fraction * institutions - 1e-9))
        return self.clients_per_round


class TreeTrainingConfig(BaseModel):
    """The XGBoost engine: federated gradient-boosted trees (histogram method; XGBoost's federated mode)."""

    model_config = ConfigDict(extra="forbid")
    supports_privacy: ClassVar[bool] = False  # fedrisk has no differential privacy for trees
    supports_secure_aggregation: ClassVar[bool] = False  # XGBoost's federated server sums the histograms itself

    engine: Literal["xgboost"]
    rounds: int = Field(300, ge=1, le=10_000, description="Maximum trees (boosting rounds).")
    max_depth: int = Field(4, ge=1, le=16)
    learning_rate: float = Field(0.05, gt=0, le=1, description="eta: each tree's shrinkage.")
    min_child_weight: float = Field(5.0, ge=0, le=1e6)
    subsample: float = Field(1.0, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0, le=1e6)
    max_bin: int = Field(256, ge=2, le=4096, description="Histogram bins per feature.")
    positive_class_weight: PositiveClassWeight = Field(
        1.0, description="scale_pos_weight; 'balanced' = negatives/positives from federated counts."
    )
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    early_stopping: EarlyStoppingConfig | None = Field(
        default_factory=lambda: EarlyStoppingConfig(patience=20),
        description="Stop adding trees when the federated validation log loss stops improving.",
    )
    monotone: dict[str, Literal[1, -1]] = Field(
        default_factory=dict,
        description="Monotone constraints by numeric feature: 1 never lowers the risk as "
        "the feature grows (days past due), -1 never raises it.",
    )


def _first_error(error: ValueError) -> str:
    """A config error's first reason, without pydantic's headers and links."""
    from pydantic import ValidationError

    return error.errors()[0]["msg"] if isinstance(error, ValidationError) else str(error)


def _engine(value: object) -> str:
    return value.get("engine", "tff") if isinstance(value, dict) else getattr(value, "engine", "tff")


ENGINES = ("tff", "xgboost")

Training = Annotated[
    Annotated[TrainingConfig, Tag("tff")] | Annotated[TreeTrainingConfig, Tag("xgboost")], Discriminator(_engine)
]


class EvaluationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="The decision: a probability at or above it is flagged (declined), below it approved: confusion "
        "counts and the fair-lending figures are at this cutoff.",
    )
    approve_at_points: float | None = Field(
        None,
        description="A scorecard's decision in points: approved at or above them. Sets `threshold` to the bad "
        "probability with that score (the config's scorecard scaling).",
    )
    max_false_positive_rate: float = Field(
        0.05, gt=0.0, lt=1.0, description="recall_at_fpr: the share of positives caught at this false-positive rate."
    )
    alert_rate: float = Field(
        0.01,
        gt=0.0,
        lt=1.0,
        description="recall_at_alert_rate: the share of positives caught when this share of "
        "rows (the highest scores) is flagged, e.g. transactions sent to review.",
    )


class PromotionConfig(BaseModel):
    """When a challenger replaces the champion: better on `metric` by `min_improvement`, and the guardrails hold."""

    model_config = ConfigDict(extra="forbid")

    metric: PromotionMetric = Field("roc_auc", description="Primary metric, example-weighted over institutions.")
    min_improvement: float = Field(0.0, ge=0.0, le=1.0, description="How much better than the champion on `metric`.")
    max_institution_drop: float | None = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Guardrail: no institution's `metric` worse than under the champion by "
        "more than this; null turns it off.",
    )
    max_calibration_error: float | None = Field(
        0.05,
        gt=0.0,
        le=1.0,
        description="Guardrail: the challenger's expected calibration error (pooled over "
        "institutions) below this; null turns it off.",
    )
    min_adverse_impact_ratio: float | None = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Guardrail (schemas with protected attributes): no group's approval rate below this share of "
        "its reference group's, over the consortium (the four-fifths rule); null turns it off.",
    )
    max_adverse_impact_drop: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Guardrail: no group's adverse impact ratio lower than under the champion by more than this.",
    )
    min_group_rows: int = Field(
        30,
        ge=1,
        description="A protected group with fewer holdout rows over the consortium is reported, not judged by the "
        "fairness guardrails (its ratio is mostly chance).",
    )
    promote_with_lost_institutions: bool = Field(
        False,
        description="Promote a challenger trained and evaluated without an institution lost mid-training "
        "(registered either way); false: a person decides (fedrisk models promote).",
    )


class BaselinesConfig(BaseModel):
    """Simulation mode only (one run reads every institution's rows): what federation is compared with."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Train a local-only model per institution and a pooled model of the "
        "same architecture, and evaluate them next to the federated one.",
    )
    max_epochs: int = Field(100, ge=1, le=10_000, description="Epochs of centralized training (Adam).")
    patience: int = Field(5, ge=1, le=1_000, description="Early stopping on the validation split's loss.")
    # Measured on the demo's institutions: batch 256 at 0.003 matches batch 64 at 0.001 (holdout AUC
    # within 0.003 for logistic regression and MLP) in a third of the time.
    batch_size: int = Field(256, ge=1, le=65_536)
    learning_rate: float = Field(0.003, gt=0, le=1)


class ScorecardConfig(BaseModel):
    """How a logistic regression's log-odds become score points (the scorecard form)."""

    model_config = ConfigDict(extra="forbid")

    points_to_double_odds: float = Field(
        20.0, gt=0, le=1000, description="PDO: points that double the odds of good to bad."
    )
    base_score: float = Field(600.0, ge=0, le=100_000, description="Score at the base odds.")
    base_odds: float = Field(50.0, gt=0, le=1e6, description="Odds of good to bad at the base score.")


class PrivacyConfig(BaseModel):
    """Differential privacy of what leaves the institutions during training, and the budget it may spend.

    record_level: DP-SGD in each institution's local training protects every customer (add or remove
    one row). client_level: noise on the sum of the institutions' clipped updates protects each
    institution as a whole; it needs many members (with a handful it destroys the model).
    """

    model_config = ConfigDict(extra="forbid")

    mechanism: Literal["none", "record_level", "client_level"] = Field("none")
    clip_norm: float = Field(
        1.0,
        gt=0,
        le=1e6,
        description="L2 clip of each example's gradient (record_level) or of each institution's update (client_level).",
    )
    noise_multiplier: float | None = Field(
        None, gt=0, le=1e4, description="Noise stddev / clip norm; or give target_epsilon."
    )
    target_epsilon: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="Spend at most this epsilon per "
        "institution in this run (the noise is "
        "calibrated to the planned rounds).",
    )
    delta: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Default: 1/n of each institution's training rows (record_level), 1e-5 (client_level).",
    )
    adaptive_clipping: bool = Field(
        False,
        description="client_level only: clip to the (privately estimated) median update norm, starting at clip_norm.",
    )
    budget_epsilon: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="Total epsilon each institution allows over "
        "every model version (ledger); null = no "
        "limit. Per institution: privacy_budget.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PrivacyConfig:
        if self.mechanism == "none":
            given = [
                name
                for name in ("noise_multiplier", "target_epsilon", "delta", "budget_epsilon")
                if getattr(self, name) is not None
            ] + (["adaptive_clipping"] if self.adaptive_clipping else [])
            if given:
                raise ValueError(
                    f"{', '.join(given)} given but mechanism is none; set mechanism: record_level or client_level"
                )
            return self
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(f"{self.mechanism} privacy needs exactly one of noise_multiplier or target_epsilon")
        if self.adaptive_clipping and self.mechanism != "client_level":
            raise ValueError("adaptive_clipping applies to client_level privacy only")
        return self


class SecureAggregationConfig(BaseModel):
    """Secure aggregation across nodes: the coordinator learns only the sums of updates and statistics."""

    model_config = ConfigDict(extra="forbid")

    threshold: int | None = Field(
        None,
        ge=2,
        description="Shares that rebuild a secret (t): a round completes while "
        "at least t nodes finish it. Default: a majority.",
    )
    min_institutions: int = Field(
        3, ge=3, description="Fewest institutions in a secure sum (a sum of two inputs reveals each to the other)."
    )
    clip_norm: float = Field(
        10.0,
        gt=0,
        le=1e6,
        description="L2 bound each node clips its update to (the robust aggregator's clipping, at the node).",
    )


class MonitoringConfig(BaseModel):
    """When the champion's monitoring report calls for a look (warn) or a retraining (act)."""

    model_config = ConfigDict(extra="forbid")

    stability_warn: float = Field(
        0.10, gt=0.0, le=10.0, description="Population stability index of the grades or a feature's bins: a look."
    )
    stability_act: float = Field(0.25, gt=0.0, le=10.0, description="The same index at which the population changed.")
    stability_p_floor: float = Field(
        0.01,
        gt=0.0,
        lt=0.5,
        description="An index counts only when the chi-square test of the two samples' bins puts it beyond sampling "
        "noise (p below this): a small bank's month moves its index by chance.",
    )
    jeffreys_p_floor: float = Field(
        0.01,
        gt=0.0,
        lt=0.5,
        description="The portfolio's default rate above its PD at this significance (the Jeffreys test's p-value "
        "below it) calls for a retraining; one grade's, for a look.",
    )
    min_default_rate_excess: float = Field(
        0.1,
        ge=0.0,
        le=10.0,
        description="A default rate calls for action only when it is also this share above its PD (0.1: 10 % "
        "above): with 100,000 rows a rate a few tenths of a point above its PD is significant, and immaterial.",
    )
    max_auc_drop: float = Field(
        0.05, gt=0.0, lt=1.0, description="The grades' AUC lower than at development by more than this: retrain."
    )
    grade_pd: Literal["development", "predicted"] = Field(
        "development",
        description="The PD each grade's back-test tests: its default rate over the development sample (the master "
        "scale's calibration), or the model's mean predicted probability in the grade.",
    )
    cooldown_hours: float = Field(
        24.0, ge=0.0, le=24 * 365, description="After a retraining that monitoring started, none other for so long."
    )

    @model_validator(mode="after")
    def _ordered(self) -> MonitoringConfig:
        if self.stability_act <= self.stability_warn:
            raise ValueError("monitoring.stability_act must be above monitoring.stability_warn")
        return self


class TuningRange(BaseModel):
    """One training setting searched: from `low` to `high` (on a log scale when `log`; whole numbers for a whole-number
    setting), or one of `choices`."""

    model_config = ConfigDict(extra="forbid")

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[float | int | str | list[int]] | None = None

    @model_validator(mode="after")
    def _range(self) -> TuningRange:
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give either choices (at least one) or low and high, not both")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("give low < high (or choices)")
        if self.log and self.low <= 0:
            raise ValueError("a log scale needs low > 0")
        return self


# Settings tuning leaves alone: they decide which rows score a trial, or how the consortium runs, not the model.
UNTUNABLE = ("engine", "validation_fraction", "schedule", "clients_per_round", "clients_fraction", "early_stopping")


class TuningConfig(BaseModel):
    """Federated tuning: `trials` trainings with settings Optuna suggests, each scored by its federated validation
    AUC (the institutions' validation splits, never their holdouts); the best trial's model is the challenger."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(ge=2, le=500, description="The trial budget: trainings at most (pruned ones count).")
    timeout_minutes: float | None = Field(
        None, gt=0, description="Start no trial after this many minutes (the trials done compete)."
    )
    pruning: bool = Field(True, description="Stop a trial whose validation AUC is below the median of earlier trials.")
    startup_trials: int = Field(3, ge=1, le=100, description="Trials run to the end before any is pruned.")
    warmup_rounds: int = Field(
        10,
        ge=0,
        le=10_000,
        description="Rounds of a trial before it may be pruned (a slower learning rate is behind early, not worse).",
    )
    parameters: dict[str, TuningRange] = Field(
        default_factory=dict,
        description="Training settings to search (dotted for nested ones: model.hidden_units); the engine's "
        "defaults when empty.",
    )


# What each engine searches when the config names no parameters: the settings that moved validation AUC most on
# the UCI banks, over ranges where training stays stable.
TREE_SPACE = {
    "max_depth": TuningRange(low=2, high=8),
    "learning_rate": TuningRange(low=0.02, high=0.3, log=True),
    "min_child_weight": TuningRange(low=1, high=100, log=True),
    "subsample": TuningRange(low=0.5, high=1.0),
    "reg_lambda": TuningRange(low=0.1, high=100, log=True),
}
NETWORK_SPACE = {
    "client_learning_rate": TuningRange(low=0.005, high=0.5, log=True),
    "local_epochs": TuningRange(low=1, high=3),
    "batch_size": TuningRange(choices=[32, 64, 128, 256]),
}
ADAPTIVE_SERVERS = ("fedadam", "fedyogi", "fedadagrad")


def search_space(tuning: TuningConfig, training: TrainingConfig | TreeTrainingConfig) -> dict[str, TuningRange]:
    """The settings searched: the config's, or the engine's defaults (with the server's learning rate for an adaptive
    server optimizer, and the hidden layers for an MLP)."""
    if tuning.parameters:
        return dict(tuning.parameters)
    if isinstance(training, TreeTrainingConfig):
        return dict(TREE_SPACE)
    space = dict(NETWORK_SPACE)
    if training.algorithm in ADAPTIVE_SERVERS:
        space["server_learning_rate"] = TuningRange(low=0.001, high=0.1, log=True)
    if training.model.kind == "mlp":
        space["model.hidden_units"] = TuningRange(choices=[[16], [32], [64, 32], [128, 64]])
    return space


def with_setting(
    training: TrainingConfig | TreeTrainingConfig, name: str, value: object
) -> TrainingConfig | TreeTrainingConfig:
    """`training` with one (dotted) setting replaced, validated as the config validates it: ValueError when the value
    is not valid for it, KeyError when the engine has no such setting."""
    plain = training.model_dump()
    *path, last = name.split(".")
    node = plain
    for part in path:
        node = node[part]
    if last not in node:
        raise KeyError(name)
    whole = is_whole_setting(training, name)
    node[last] = int(round(value)) if whole and isinstance(value, float) and float(value).is_integer() else value
    return type(training).model_validate(plain)


def is_whole_setting(training: TrainingConfig | TreeTrainingConfig, name: str) -> bool:
    """Whether a (dotted) training setting is a whole number (searched as one); KeyError when there is none."""
    node: object = training.model_dump()
    for part in name.split("."):
        node = node[part]  # type: ignore[index]
    return isinstance(node, int) and not isinstance(node, bool)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    _source_file: Path | None = PrivateAttr(None)

    model_name: str = Field(pattern=NAME_PATTERN, description="Registered model name in MLflow.")
    data_schema: Schema = Field(
        "credit_default",
        alias="schema",
        validate_default=True,
        description="The data contract (schemas/NAME.yaml): layout, checks, label and output; the suite follows.",
    )
    institutions: list[InstitutionConfig] = Field(min_length=1)
    features: list[str] | None = Field(
        None, min_length=1, description="The schema's features the model uses; all when unset."
    )
    training: Training = Field(default_factory=TrainingConfig, description="engine: tff (default) or xgboost.")
    holdout_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="Stratified share each institution holds out.")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    quorum: int = Field(1, ge=1, description="Minimum institutions that must pass validation.")
    quorum_row_share: float = Field(
        0.0, ge=0.0, le=1.0, description="Minimum share of all reported rows the passing institutions must hold."
    )
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    monitoring: MonitoringConfig = Field(
        default_factory=MonitoringConfig, description="Thresholds of the champion's monitoring (fedrisk monitor)."
    )
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    scorecard: ScorecardConfig = Field(
        default_factory=ScorecardConfig, description="Points scaling of a logistic regression (scorecard)."
    )
    intended_use: str | None = Field(
        None,
        min_length=1,
        max_length=4000,
        description="What the model is for and not for (the model card's words); a "
        "sentence from the schema's description when unset.",
    )
    drift_checks: bool = Field(
        True,
        description="Check each extract against the institution's last accepted one; turn off "
        "once to accept a deliberate change (a new portfolio, a re-based currency).",
    )
    tls: TlsConfig | None = Field(
        None,
        description="Cross-silo: the coordinator's certificate, key and the "
        "consortium CA (paths relative to this file).",
    )
    secure_aggregation: SecureAggregationConfig | None = Field(
        None, description="true (or settings): nodes send only masked updates and statistics; cross-silo, TFF."
    )
    tuning: TuningConfig | None = Field(
        None, description="Tune the training settings with federated trials; the best trial's model competes."
    )

    @field_validator("secure_aggregation", mode="before")
    @classmethod
    def _switch(cls, value: object) -> object:
        return {} if value is True else None if value is False else value

    def _check_secure_aggregation(self, cross_silo: bool) -> None:
        secure, n = self.secure_aggregation, len(self.institutions)
        assert secure is not None  # called only when it is set
        if not cross_silo:
            raise ValueError(
                "secure_aggregation needs institutions at nodes (node: addresses): in simulation every "
                "row is in this process anyway"
            )
        if not self.training.supports_secure_aggregation:
            raise ValueError(
                "secure_aggregation covers the TFF engine; XGBoost's federated server sums gradient "
                "histograms itself (engine: xgboost cannot use it)"
            )
        if isinstance(self.training, TrainingConfig) and self.training.aggregation == "compression":
            raise ValueError(
                "secure_aggregation sums exact fixed-point updates; it does not combine with "
                "training.aggregation: compression"
            )
        if self.privacy.mechanism == "client_level":
            raise ValueError(
                "secure_aggregation does not combine with privacy.mechanism client_level (the "
                "coordinator would have to clip and noise each update, which it no longer sees); "
                "use record_level (DP-SGD at each node)"
            )
        if n < secure.min_institutions:
            raise ValueError(
                f"secure_aggregation needs at least {secure.min_institutions} institutions "
                f"(min_institutions); {n} configured: with two, each sees the other's input"
            )
        if secure.threshold is not None and secure.threshold > n:
            raise ValueError(f"secure_aggregation.threshold {secure.threshold} is more than the {n} institutions")
        for name in self.feature_names:
            feature = self.data_schema.features[name]
            if feature.type == "categorical" and feature.levels == "open":
                raise ValueError(
                    f"secure_aggregation needs the levels of categorical feature '{name}' declared in "
                    f"schema {self.data_schema.name}: open levels would be named in the clear"
                )

    def _check_schedule(self, cross_silo: bool) -> None:
        """A deadline or a buffer waits on institutions' nodes; a buffer under secure aggregation is one secure sum."""
        if not isinstance(self.training, TrainingConfig) or self.training.schedule.mode == "synchronous":
            return
        schedule = self.training.schedule
        where = f"training.schedule.mode {schedule.mode}"
        if not cross_silo:
            raise ValueError(
                f"{where} waits on institutions' nodes (node: addresses); in simulation every institution trains "
                f"in this process, one after another"
            )
        n = len(self.institutions)
        sampled = self.training.sampled(n) or n
        if schedule.mode == "buffered" and schedule.buffer_size > sampled:
            raise ValueError(
                f"training.schedule.buffer_size {schedule.buffer_size} is more than the {sampled} institutions that "
                f"train at once"
            )
        if self.secure_aggregation is not None:
            if schedule.mode == "deadline" and schedule.late_updates == "discount":
                raise ValueError(
                    "under secure_aggregation a late update cannot be applied later: alone in a sum it would be "
                    "read; set training.schedule.late_updates: drop"
                )
            threshold = max(self.secure_threshold(n), self.secure_aggregation.min_institutions)
            if schedule.mode == "buffered" and schedule.buffer_size < threshold:
                raise ValueError(
                    f"under secure_aggregation a buffer is one secure sum: training.schedule.buffer_size "
                    f"{schedule.buffer_size} is fewer than the {threshold} institutions a sum needs"
                )

    def _check_tuning(self) -> None:
        """Every searched setting is a training setting tuning may change, and each end of its range (each choice) a
        valid value of it; the trials' privacy is refused until it is accounted across trials."""
        assert self.tuning is not None
        if self.privacy.mechanism != "none" and self.privacy.target_epsilon is None:
            raise ValueError(
                "tuning under differential privacy needs privacy.target_epsilon: the run's epsilon, shared by its "
                "trials (each plans its noise for epsilon / trials; a fixed noise_multiplier would let the trials "
                "spend without a bound)"
            )
        for name, searched in search_space(self.tuning, self.training).items():
            where = f"tuning.parameters.{name}"
            if name.split(".")[0] in UNTUNABLE:
                raise ValueError(f"{where}: training.{name} is not tuned (it decides the rows that score a trial)")
            values = searched.choices if searched.choices is not None else [searched.low, searched.high]
            for value in values:
                try:
                    with_setting(self.training, name, value)
                except (KeyError, TypeError):
                    raise ValueError(
                        f"{where}: the {self.training.engine} engine has no setting training.{name}"
                    ) from None
                except ValueError as error:
                    raise ValueError(f"{where}: {value!r} is no valid training.{name}: {_first_error(error)}") from None

    def secure_threshold(self, institutions: int) -> int:
        """t for a secure sum over `institutions` nodes: the configured one, else a majority (at least 2)."""
        from secagg.protocol import default_threshold

        configured = self.secure_aggregation.threshold if self.secure_aggregation is not None else None
        return configured or default_threshold(institutions)

    @field_validator("data_schema", mode="before")
    @classmethod
    def _load_schema(cls, value: object, info: ValidationInfo) -> object:
        """A schema name is looked up in the schemas directory (the edge passes it as validation context)."""
        if isinstance(value, str):
            return load_schema(value, (info.context or {}).get("schemas_dir", SCHEMAS_DIR))
        return value

    @field_serializer("data_schema")
    def _schema_name(self, schema: Schema) -> str:
        return schema.name

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.evaluation.approve_at_points is not None:  # the decision in points, as a probability cutoff
            from riskmodel.scaling import Scaling

            threshold = Scaling(**self.scorecard.model_dump()).probability_at(self.evaluation.approve_at_points)
            if not 0.0 < threshold < 1.0:
                raise ValueError(f"evaluation.approve_at_points {self.evaluation.approve_at_points:g} is no score")
            self.evaluation = self.evaluation.model_copy(update={"threshold": threshold})
        names = [i.name for i in self.institutions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"institution names must be unique; repeated: {duplicates}")
        if self.features is not None:
            known = list(self.data_schema.features)
            unknown = [f for f in self.features if f not in known]
            if unknown:
                raise ValueError(
                    f"features {unknown} are not features of schema {self.data_schema.name} "
                    f"(its features: {known}; the ID and label are not features)"
                )
            if len(set(self.features)) != len(self.features):
                raise ValueError("features are listed more than once")
            protected = {a.column: name for name, a in self.data_schema.protected.items()}
            inputs = [f for f in self.features if f in protected]
            if inputs:
                named = ", ".join(f"{f} (protected attribute {protected[f]})" for f in inputs)
                raise ValueError(
                    f"features {named} are protected in schema {self.data_schema.name}: used only to test the "
                    f"model for fair lending, never as its inputs"
                )
        if self.quorum > len(self.institutions):
            raise ValueError(f"quorum {self.quorum} is more than the {len(self.institutions)} institutions configured")
        sampled = getattr(self.training, "clients_per_round", None)
        if sampled is not None and sampled > len(self.institutions):
            raise ValueError(
                f"training.clients_per_round {sampled} is more than the "
                f"{len(self.institutions)} institutions configured"
            )
        budgeted = [i.name for i in self.institutions if i.privacy_budget is not None]
        if budgeted and self.privacy.mechanism == "none":
            raise ValueError(
                f"institutions {budgeted} set a privacy_budget, but privacy.mechanism is none: "
                f"training on their rows without differential privacy would spend an unbounded epsilon"
            )
        nodes = [i.name for i in self.institutions if i.node]
        if nodes and len(nodes) != len(self.institutions):
            raise ValueError("institutions are either all nodes (cross-silo) or all paths (simulation)")
        if nodes and self.tls is None:
            raise ValueError("cross-silo institutions need tls: {ca, cert, key} (the coordinator's certificate)")
        if nodes and self.baselines.enabled:
            raise ValueError("baselines need every institution's rows in one place: simulation only, not with nodes")
        if not self.training.supports_privacy and self.privacy.mechanism != "none":
            raise ValueError(
                f"privacy.mechanism {self.privacy.mechanism} is not supported with engine: "
                f"{self.training.engine} (fedrisk has no differential privacy for trees): train without "
                f"it, or use engine: tff"
            )
        monotone = getattr(self.training, "monotone", {})  # the trees' monotone constraints
        bad = [f for f in monotone if f not in self.feature_names or self.data_schema.features[f].type == "categorical"]
        if bad:
            raise ValueError(f"training.monotone: {bad} are not numeric features of this model")
        if self.secure_aggregation is not None:
            self._check_secure_aggregation(bool(nodes))
        self._check_schedule(bool(nodes))
        if self.tuning is not None:
            self._check_tuning()
        if self.privacy.mechanism == "record_level" and getattr(self.training, "algorithm", None) == "fedprox":
            raise ValueError(
                "record_level privacy trains locally with DP-SGD; use fedavg or an adaptive server "
                "optimizer (fedadam, fedyogi, fedadagrad), not fedprox"
            )
        return self

    @property
    def feature_names(self) -> list[str]:
        """The features the model uses, in the schema's order (never a protected attribute's column)."""
        chosen = set(self.features or self.data_schema.features) - self.data_schema.protected_columns
        return [f for f in self.data_schema.features if f in chosen]

    @property
    def label(self) -> str:
        return self.data_schema.label.column

    @property
    def suite(self) -> str:
        return self.data_schema.suite

    @property
    def use(self) -> str:
        """The intended use as the card states it."""
        schema = self.data_schema
        return self.intended_use or (
            f"{schema.description.rstrip('.')}: the probability of {schema.label.meaning}, for ranking and "
            f"decisions on portfolios like those of the member institutions. Not validated for other products, "
            f"for customers outside the members' populations, or as the sole basis of a decision."
        )

    @property
    def source_file(self) -> Path | None:
        """The YAML file this config was read from (None when built in code): whether it is committed is part of
        the version's lineage."""
        return self._source_file

    def plain(self) -> dict:
        """The config as plain values (the schema by name), as logged and hashed."""
        return self.model_dump(mode="json", by_alias=True)

    @property
    def cross_silo(self) -> bool:
        return self.institutions[0].node is not None

    def privacy_budgets(self) -> dict[str, float | None]:
        """Each institution's total epsilon budget: its own, else privacy.budget_epsilon (None: no limit)."""
        return {
            i.name: i.privacy_budget if i.privacy_budget is not None else self.privacy.budget_epsilon
            for i in self.institutions
        }
