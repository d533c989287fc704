"""The privacy stage's Prefect tasks: reserve a retraining's budget before it trains, settle what it spent, and
tie the ledger's record to the registered version (tracking.privacy does the work)."""

from __future__ import annotations

from prefect import task

from tasks.retries import TRANSIENT_RETRIES
from tracking import privacy

reserve_privacy_budget = task(
    name="reserve-privacy-budget", task_run_name="reserve-privacy-budget", **TRANSIENT_RETRIES
)(privacy.reserve_privacy_budget)
settle_privacy_budget = task(name="settle-privacy-budget", task_run_name="settle-privacy-budget", **TRANSIENT_RETRIES)(
    privacy.settle_privacy_budget
)
record_ledger_version = task(name="record-ledger-version", task_run_name="record-ledger-version", **TRANSIENT_RETRIES)(
    privacy.record_ledger_version
)
