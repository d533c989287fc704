"""Where each institution's rows are, as the coordinator's flow sees them.

Every per-institution step (validate, statistics, training rounds, federated validation, holdout
evaluation) goes through a consortium (consortium.protocol.Consortium): `LocalConsortium` runs it in this process
on the institution's
extract (simulation, the stand-in for a node), consortium.nodes.NodeConsortium at the institution's own node
(cross-silo). Both call the same per-institution functions, so the flow, and the results, are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from contract.data import Extract, labels, load_parts, read_parts, streamed
from institution.evaluation import InstitutionEvaluation, evaluate_rows
from institution.monitoring import MonitoredExtract, monitor_extract
from institution.statistics import FeatureSpace, LocalStatistics, extract_statistics
from institution.validation import ValidationReport, validate_extract


@dataclass(frozen=True)
class LocalConsortium:
    """Simulation: every institution's extract is readable here (the demo, benchmarks, tests)."""

    extracts: tuple[Extract, ...]
    cross_silo = False
    secure = False  # secure aggregation is for nodes only

    @property
    def names(self) -> list[str]:
        return [e.institution for e in self.extracts]

    def extract(self, institution: str) -> Extract:
        return next(e for e in self.extracts if e.institution == institution)

    def secure_tags(self) -> dict[str, str]:
        """None: secure aggregation is for nodes."""
        return {}

    def for_run(self, run_key: str, champion: Path | None) -> LocalConsortium:
        """The same: in simulation there is no node to name the training's models to."""
        return self

    def validate(self, institution, schema, reference, expectations_dir) -> ValidationReport:
        return validate_extract(self.extract(institution), schema, reference, expectations_dir)

    def admit(self, reports: list[ValidationReport]) -> LocalConsortium:
        """The institutions that passed, each pinned to the digest validation saw (every later read checks it)."""
        passed = {r.institution: r.digest for r in reports if r.passed}
        return LocalConsortium(
            tuple(e.validated(passed[e.institution]) for e in self.extracts if e.institution in passed)
        )

    def statistics(self, institution, schema, features, split) -> LocalStatistics:
        return extract_statistics(self.extract(institution), schema, features, split)

    def training(self, space: FeatureSpace, run_key: str, deltas=None):
        """The institutions' client work and validation, run here on their fit and validation rows."""
        from fed_models.training import ClientData, LocalInstitutions

        clients, validation = [], []
        for extract, parts in self._fit_and_validation(space, space.layout.encode):
            clients.append(ClientData(extract.institution, *parts["fit"]))
            validation.append(ClientData(extract.institution, *parts["validation"]))
        return LocalInstitutions(clients, validation)

    def tree_data(self, space: FeatureSpace):
        """The XGBoost engine's input: each institution's rows in the layout's native encoding (one worker each)."""
        from fed_trees.training import TreeData

        return [
            TreeData(extract.institution, *parts["fit"], *parts["validation"])
            for extract, parts in self._fit_and_validation(space, space.layout.encode_native)
        ]

    def _fit_and_validation(self, space: FeatureSpace, encode: Callable[[pd.DataFrame], np.ndarray]):
        """Each institution's fit and validation rows, `encode`d, with their labels: from one read of its extract,
        or for a large one (contract.data.streamed) a chunk at a time."""
        parts = ("fit", "validation")
        for extract in self.extracts:
            if streamed(extract):
                columns = [f.name for f in space.layout.features]
                yield extract, read_parts(extract, space.schema, space.split, parts, columns, encode)
            else:
                rows = load_parts(extract, space.schema, space.split, parts)
                yield extract, {part: (encode(rows[part]), labels(rows[part], space.schema)) for part in parts}

    def evaluate(self, institution, schema, split, models, evaluation) -> InstitutionEvaluation:
        return evaluate_rows(self.extract(institution), schema, split, models, evaluation)

    def monitor(self, institution, schema, model: Path, period: str, thresholds) -> MonitoredExtract:
        """The champion (an exported model, `model`) on the institution's extract of `period`: monitoring counts
        (the reports are judged where they are read: `thresholds` serve a node's own report)."""
        from riskmodel import model as exported

        extract = self.extract(institution)
        return monitor_extract(extract.path, schema, exported.load(model), extract.columns)
