"""What an institution agreed to, checked by its node on every request that could go beyond it: its schema, the
rounds, model kinds and privacy of a training, plain (unmasked) answers, trees, evaluations. Each refusal is a
NodeRefusal whose sentence names the institution and the policy field."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contract.schema import Schema
from errors import FedriskError
from node.config import NodeConfig
from node.messages import SchemaRef

if TYPE_CHECKING:
    from fed_models.training import TrainingSpec
    from fed_trees.spec import TreeSpec


class NodeRefusal(FedriskError, ValueError):
    """A request the node will not serve: outside its institution's policy, or not what its data is."""


class UnknownRun(FedriskError, LookupError):
    """A round of a training, or a phase of a secure sum, this node has no state for (it restarted): prepare or
    begin it again."""


class Policy:
    """The node config's policy, with the institution's name and schema, as checks."""

    def __init__(self, config: NodeConfig, schema: Schema):
        self.name, self.schema, self.agreed = config.institution, schema, config.policy

    def check_schema(self, asked: SchemaRef) -> None:
        """The request is about the schema the institution's extract follows."""
        if (asked.name, str(asked.version)) != (self.schema.name, str(self.schema.version)):
            raise NodeRefusal(
                f"institution '{self.name}': its extract follows schema {self.schema.name} version "
                f"{self.schema.version}; the coordinator asked for {asked.name} version {asked.version}"
            )

    def check_training(self, spec: TrainingSpec) -> None:
        """A TFF training (fed_models.training.TrainingSpec) within the agreed rounds, model kinds and privacy."""
        from fed_models.training import RecordLevelPrivacy

        agreed = self.agreed
        if spec.rounds > agreed.max_rounds:
            raise NodeRefusal(
                f"institution '{self.name}' agreed to at most {agreed.max_rounds} rounds, the run "
                f"plans {spec.rounds} (policy.max_rounds)"
            )
        if spec.model.kind not in agreed.model_kinds:
            raise NodeRefusal(
                f"institution '{self.name}' trains only {agreed.model_kinds}, not {spec.model.kind} "
                f"(policy.model_kinds)"
            )
        if agreed.require_privacy == "record_level" and not isinstance(spec.privacy, RecordLevelPrivacy):
            raise NodeRefusal(
                f"institution '{self.name}' trains only with record-level differential privacy "
                f"(DP-SGD); the run asks for {type(spec.privacy).__name__ if spec.privacy else 'none'} "
                f"(policy.require_privacy)"
            )
        if agreed.min_noise_multiplier is not None and isinstance(spec.privacy, RecordLevelPrivacy):
            noise = spec.privacy.noise_multipliers.get(self.name)
            if noise is None or noise < agreed.min_noise_multiplier:
                raise NodeRefusal(
                    f"institution '{self.name}' trains with DP-SGD only at a noise multiplier of at "
                    f"least {agreed.min_noise_multiplier:g}; the run asks for {noise} "
                    f"(policy.min_noise_multiplier)"
                )

    def check_round(self, run_key: str, declared: int, round_num: int) -> None:
        """Every round against what the run declared at Prepare and the institution's own limit (a coordinator
        that declared few rounds and asks for more is refused at the first one past them)."""
        if round_num < 1 or round_num > declared:
            raise NodeRefusal(
                f"institution '{self.name}': run {run_key} declared {declared} rounds at Prepare; round "
                f"{round_num} is not one of them (the declared rounds)"
            )
        if round_num > self.agreed.max_rounds:
            raise NodeRefusal(
                f"institution '{self.name}' agreed to at most {self.agreed.max_rounds} rounds; round {round_num} of "
                f"run {run_key} is past them (policy.max_rounds)"
            )

    def check_trees(self, spec: TreeSpec) -> None:
        """A tree training (fed_trees.spec.TreeSpec): XGBoost's federated server sees each worker's gradient
        histograms and trees have no differential privacy, so a node that requires either refuses it."""
        agreed = self.agreed
        if agreed.require_secure_aggregation:
            raise NodeRefusal(
                f"institution '{self.name}' sends only masked sums (policy.require_secure_aggregation); "
                f"XGBoost's federated server sees each institution's gradient histograms"
            )
        if "gradient_boosted_trees" not in agreed.model_kinds:
            raise NodeRefusal(f"institution '{self.name}' trains only {agreed.model_kinds}, not gradient_boosted_trees")
        if spec.rounds > agreed.max_rounds:
            raise NodeRefusal(
                f"institution '{self.name}' agreed to at most {agreed.max_rounds} rounds, the run plans {spec.rounds}"
            )
        if agreed.require_privacy != "none":
            raise NodeRefusal(
                f"institution '{self.name}' trains only with record-level differential privacy, which "
                f"trees do not have (policy.require_privacy)"
            )

    def refuse_plain(self, what: str, prepared_secure: bool = False) -> None:
        """`what` (statistics, model updates, validation metrics) leaves only masked when the institution requires
        secure aggregation, or when the run was prepared for it."""
        if self.agreed.require_secure_aggregation:
            raise NodeRefusal(
                f"institution '{self.name}' sends its {what} only through secure aggregation "
                f"(policy.require_secure_aggregation)"
            )
        if prepared_secure:
            raise NodeRefusal(
                f"institution '{self.name}' sends its {what} only through secure aggregation (the run "
                f"was prepared for it)"
            )

    def check_evaluations(self, run_key: str, evaluations: int) -> None:
        """A run's models are scored at most policy.max_evaluations_per_run times (refused requests count too)."""
        limit = self.agreed.max_evaluations_per_run
        if evaluations > limit:
            raise NodeRefusal(
                f"institution '{self.name}' evaluates the models of run {run_key} at most {limit} "
                f"times (policy.max_evaluations_per_run)"
            )
