"""Ad hoc runs of a deployment: start one on the Prefect server and follow it to its final state."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from errors import ExitCode
from flows.deployments import DeploymentError

DEFAULT_FLOW = "retrain-from-config"
SUMMARY_KEYS = ("retrain-", "monitor-")  # the artifacts a followed run ends by printing
# The exit code of `fedrisk trigger` for each final state of the run it follows.
EXIT_CODES = {
    "COMPLETED": ExitCode.OK,
    "FAILED": ExitCode.FAILED,
    "CRASHED": ExitCode.CRASHED,
    "CANCELLED": ExitCode.CANCELLED,
}
STILL_RUNNING_EXIT_CODE = ExitCode.STILL_RUNNING
LAST_LOGS_SECONDS = 10.0  # how long a finished run's last log lines may take to reach the API


def parse_params(given: list[str], flow_parameters: set[str]) -> dict[str, Any]:
    """`k=v` pairs as a deployment run's parameters: a flow parameter by name (`config_file=...`), any
    other key is a dotted run-config key collected into `overrides` (`training.rounds=5`).
    Values are read as JSON when they are JSON (`5`, `false`, `[32, 16]`), else as text, like
    `prefect deployment run --param`.
    """
    parameters: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for item in given:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--param {item!r}: expected KEY=VALUE, e.g. training.rounds=5")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key in flow_parameters:
            parameters[key] = value
        elif "overrides" in flow_parameters:
            overrides[key] = value
        else:
            raise ValueError(f"--param {key}: not a parameter of this deployment ({sorted(flow_parameters)})")
    if overrides:
        parameters["overrides"] = {**(parameters.get("overrides") or {}), **overrides}
    return parameters


def find_deployment(name: str):
    """A deployment by `flow/deployment`, or by deployment name alone (the retraining flow's, else the one
    deployment of any flow with that name)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.exceptions import ObjectNotFound

    full = name if "/" in name else f"{DEFAULT_FLOW}/{name}"
    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(full)
        except ObjectNotFound:
            named = (
                []
                if "/" in name
                else client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))
            )
            if len(named) == 1:
                return named[0]
            known = sorted(f"{d.name}" for d in client.read_deployments())
            raise DeploymentError(
                f"no deployment {full!r} on the server; deployments: {known or 'none'} "
                f"(register them with `fedrisk deploy` or `fedrisk serve`)"
            ) from None


@dataclass(frozen=True)
class FinishedRun:
    flow_run_id: str
    name: str
    state: str
    message: str
    summary: str | None


def start(deployment, parameters: dict[str, Any]):
    """Create a flow run of `deployment` now; parameters merge over the deployment's own."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.create_flow_run_from_deployment(deployment.id, parameters=parameters, tags=["triggered"])


def follow(
    flow_run_id,
    on_log: Callable[[Any], None],
    on_state: Callable[[str], None],
    poll_seconds: float = 2.0,
    timeout_seconds: float | None = None,
) -> FinishedRun | None:
    """Print the run's logs and state changes as they come until it reaches a final state (None on timeout)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    seen_logs, last_state = 0, None
    with get_client(sync_client=True) as client:
        logs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        while True:
            run = client.read_flow_run(flow_run_id)
            for log in client.read_logs(log_filter=logs, offset=seen_logs, limit=200):
                on_log(log)
                seen_logs += 1
            state = run.state
            if state and state.name != last_state:
                last_state = state.name
                on_state(state.name)
            if state and state.is_final():
                # The worker sends its last log lines in a batch after the final state: read until they stop.
                quiet, settle_deadline = 0, time.monotonic() + LAST_LOGS_SECONDS
                while quiet < 2 and time.monotonic() < settle_deadline:
                    batch = client.read_logs(log_filter=logs, offset=seen_logs, limit=200)
                    for log in batch:
                        on_log(log)
                    seen_logs += len(batch)
                    quiet = 0 if batch else quiet + 1
                    if quiet < 2:
                        time.sleep(1.0)
                artifacts = [  # the run's summary: a retraining's, or a monitoring's report
                    a
                    for a in client.read_artifacts(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(exists_=True)),
                        sort=ArtifactSort.CREATED_DESC,
                    )
                    if a.key and a.key.startswith(SUMMARY_KEYS)
                ]
                return FinishedRun(
                    str(flow_run_id),
                    run.name,
                    state.type.value,
                    state.message or "",
                    artifacts[0].data if artifacts else None,
                )
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(poll_seconds)
