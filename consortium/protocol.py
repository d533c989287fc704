"""The consortium seam: what the coordinator's flow and the engines may ask of the institutions, wherever their
rows are. consortium.local.LocalConsortium (simulation: the extracts are readable here) and
consortium.nodes.NodeConsortium (each institution's own node, across silos) implement it; nothing outside this
package asks which one it holds: it asks `cross_silo`, `secure` or `extracts`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from errors import FedriskError

if TYPE_CHECKING:
    from contract.data import Extract, Split
    from contract.schema import Schema
    from institution.evaluation import InstitutionEvaluation
    from institution.monitoring import MonitoredExtract, MonitoringCounts
    from institution.statistics import FeatureSpace, LocalStatistics
    from institution.validation import ValidationReport
    from runconfig import EvaluationConfig, MonitoringConfig


class TrainingStopped(FedriskError, RuntimeError):
    """Too few institutions left mid-training (quorum, or secure aggregation's threshold); nothing is
    registered and the next run resumes from the last round's checkpoint."""


class Consortium(Protocol):
    """The institutions of one run, each step run where that institution's rows are."""

    cross_silo: bool  # at nodes: the members of CrossSiloConsortium are there too
    secure: bool  # sums only: updates and statistics through secure aggregation

    @property
    def names(self) -> list[str]:
        """The institutions, in the config's order."""

    @property
    def extracts(self) -> tuple[Extract, ...]:
        """The extracts this process may read: every institution's in simulation, none across silos (only a
        node reads its institution's file); what the simulation baselines train on."""

    def validate(
        self, institution: str, schema: Schema, reference: dict | None, expectations_dir: Path
    ) -> ValidationReport: ...

    def admit(self, reports: list[ValidationReport]) -> Consortium: ...

    def for_run(self, run_key: str, champion: Path | None) -> Consortium: ...

    def statistics(self, institution: str, schema: Schema, features: list[str], split: Split) -> LocalStatistics: ...

    def training(self, space: FeatureSpace, run_key: str, deltas: dict[str, float] | None = None) -> Any:
        """The institutions' client work and validation for the TFF engine (fed_models.training.Institutions)."""

    def tree_data(self, space: FeatureSpace) -> list[Any]:
        """Simulation: each institution's rows for XGBoost's federated workers, read here."""

    def secure_tags(self) -> dict[str, str]:
        """Under secure aggregation, its settings as lineage tags; otherwise none."""

    def evaluate(
        self, institution: str, schema: Schema, split: Split, models: dict[str, str], evaluation: EvaluationConfig
    ) -> InstitutionEvaluation: ...

    def monitor(
        self, institution: str, schema: Schema, model: Path, period: str, thresholds: MonitoringConfig
    ) -> MonitoredExtract:
        """The champion (an exported model) on the institution's extract of `period`'s scoring population: counts
        (`thresholds` judge the institution's own report where it keeps one: a node)."""


class CrossSiloConsortium(Consortium, Protocol):
    """A consortium of nodes (`cross_silo` true): where the coordinator is reached, its TLS material, the secure
    sums and the tree workers' training at each node."""

    server_host: str
    trees_bind: str
    secure_threshold: int

    @property
    def tls(self) -> Any:
        """The coordinator's certificate, key and the consortium's CA (consortium.nodes.Tls)."""

    @property
    def nodes(self) -> tuple[Any, ...]:
        """Each institution's node (consortium.nodes.NodeHandle: institution, address)."""

    def secure_statistics(
        self, schema: Schema, features: list[str], split: Split, kept: Path | None = None
    ) -> tuple[LocalStatistics, dict[str, int], str]: ...

    def secure_monitor(self, schema: Schema, model: Path, period: str, thresholds: MonitoringConfig) -> Any:
        """A period's monitoring counts as one secure sum (consortium.nodes.SecureMonitoring)."""

    def secure_fairness(self, schema: Schema, model: Path) -> tuple[dict[str, Any], str]:
        """The run's counts by protected group per role as one secure sum, and what completed."""

    def secure_development(self, model: Path) -> tuple[MonitoringCounts, list[str], str]:
        """The run's new model's development counts as one secure sum: the sum, whose it is, what completed."""

    def tree_training(
        self,
        space: FeatureSpace,
        spec: Any,
        run_key: str,
        server: str,
        on_round: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Each node's XGBoost worker trains `spec` (fed_trees.spec.TreeSpec) with the federated server at
        `server`; the booster and its rounds."""
