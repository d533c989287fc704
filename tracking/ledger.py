"""Reading the privacy ledger: every retraining's epsilon charge per institution, kept as runs of an MLflow
experiment. MLflow only (no Prefect), so `fedrisk ledger` starts in a few seconds; tracking.privacy charges it."""

from __future__ import annotations

import math
from dataclasses import dataclass

LEDGER_EXPERIMENT = "fedrisk-privacy-ledger"


@dataclass(frozen=True)
class LedgerEntry:
    """One retraining's charge: what it spent (or reserved) on each institution."""

    run_id: str
    model_name: str
    run_key: str
    version: str
    status: str
    epsilon: dict[str, float]
    delta: dict[str, float]

    @property
    def label(self) -> str:
        return f"{self.model_name} {'v' + self.version if self.version else self.status}"


def read_ledger(tracking_uri: str) -> list[LedgerEntry]:
    """Every charge in the ledger, oldest first."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(LEDGER_EXPERIMENT)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"], max_results=50_000)

    def by_institution(prefix: str, metrics: dict) -> dict[str, float]:
        return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}

    return [
        LedgerEntry(
            run_id=r.info.run_id,
            model_name=r.data.tags.get("ledger.model", "?"),
            run_key=r.data.tags.get("ledger.run_key", ""),
            version=r.data.tags.get("ledger.version", ""),
            status=r.data.tags.get("ledger.status", "?"),
            epsilon=by_institution("epsilon.", r.data.metrics),
            delta=by_institution("delta.", r.data.metrics),
        )
        for r in runs
    ]


def spent_totals(entries: list[LedgerEntry], institution: str) -> tuple[float, float, list[str]]:
    """Total epsilon and delta an institution has spent (or has reserved) over `entries`, and on what."""
    charged = [e for e in entries if institution in e.epsilon]
    return (
        math.fsum(e.epsilon[institution] for e in charged),
        math.fsum(e.delta[institution] for e in charged),
        [e.label for e in charged],
    )
