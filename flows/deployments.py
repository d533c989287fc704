"""Deployments: the scheduled retrainings in `prefect.yaml`, served from one process or registered for a worker.

`prefect.yaml` is the one place a schedule is written. `fedrisk serve` runs its deployments on
their schedules in this process (no work pool); `fedrisk deploy` registers them against a running
Prefect server for a worker of their process work pool to run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from errors import ExitCode, FedriskError
from flows.settings import PROJECT_ROOT
from hostguard.credentials import masked
from runconfig import NAME_PATTERN

PREFECT_FILE = PROJECT_ROOT / "prefect.yaml"


class DeploymentError(FedriskError, RuntimeError):
    """prefect.yaml or the Prefect server cannot be used as they are; the message says which and why."""

    exit_code = ExitCode.USAGE


class ScheduleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str = Field(description="Cron expression, e.g. '0 2 * * 1' (Mondays 02:00).")
    timezone: str = Field(description="IANA timezone the cron is read in, e.g. Europe/London.")
    active: bool = True


class WorkPoolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)


class TriggerSpec(BaseModel):
    """An event trigger of a deployment (Prefect's own keys): an automation that runs the deployment when an event
    named in `expect` arrives for a resource that `match` names, with `parameters` (Jinja: `{{ event.payload }}`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["event"] = "event"
    name: str | None = None
    description: str = ""
    enabled: bool = True
    expect: list[str] = Field(min_length=1)
    match: dict[str, str] = Field(default_factory=dict)
    for_each: list[str] = Field(default_factory=list, description="Count events apart per these labels' values.")
    parameters: dict[str, Any] = Field(default_factory=dict)

    def prefect(self):
        """As Prefect's deployment trigger."""
        from prefect.events import DeploymentEventTrigger

        return DeploymentEventTrigger(**self.model_dump(exclude={"type"}))


class DeploymentSpec(BaseModel):
    """One deployment of prefect.yaml, as fedrisk uses it (Prefect's own keys, a checked subset)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    entrypoint: str = Field(pattern=r"^[\w/]+\.py:\w+$", description="path/to/module.py:flow_function")
    parameters: dict[str, Any] = Field(default_factory=dict)
    schedules: list[ScheduleSpec] = Field(default_factory=list)
    triggers: list[TriggerSpec] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    work_pool: WorkPoolSpec

    @property
    def full_name(self) -> str:
        """`flow/deployment`, as Prefect names it."""
        return f"{load_flow(self.entrypoint).name}/{self.name}"


def load_deployments(path: Path = PREFECT_FILE) -> list[DeploymentSpec]:
    """Read and check the deployments of a prefect.yaml (cron expressions and timezones included)."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeploymentError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        raise DeploymentError(f"{path}: not valid YAML: {error}") from None
    entries = data.get("deployments") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DeploymentError(f"{path}: no `deployments:` list")
    specs = []
    for index, entry in enumerate(entries):
        try:
            spec = DeploymentSpec.model_validate(entry)
            for schedule in spec.schedules:
                CronSchedule(cron=schedule.cron, timezone=schedule.timezone)
        except (ValidationError, ValueError) as error:
            name = entry.get("name", index) if isinstance(entry, dict) else index
            raise DeploymentError(f"{path}: deployment {name!r}: {error}") from None
        specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise DeploymentError(f"{path}: deployment names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    return specs


def load_flow(entrypoint: str):
    """The flow an entrypoint names (`flows/retrain.py:retrain_from_config`), imported as a package module."""
    file, function = entrypoint.split(":")
    module = importlib.import_module(".".join(Path(file).with_suffix("").parts))
    return getattr(module, function)


def _schedules(spec: DeploymentSpec) -> list:
    from prefect.schedules import Cron

    return [Cron(s.cron, timezone=s.timezone, active=s.active) for s in spec.schedules]


def require_server() -> str:
    """The Prefect API URL, checked to answer: serving or deploying against a temporary API would vanish."""
    from prefect.client.orchestration import get_client
    from prefect.settings import (
        PREFECT_API_REQUEST_TIMEOUT,
        PREFECT_API_URL,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    url = PREFECT_API_URL.value()
    if not url:
        raise DeploymentError(
            "PREFECT_API_URL is not set: start a server (`prefect server start`) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (README: Run it as a service)"
        )
    # Asked once, for 10 s: with the client's retries and its 60 s timeout a server that accepted the connection
    # and never answered took a minute to be reported.
    once = {PREFECT_CLIENT_MAX_RETRIES: 0, PREFECT_API_REQUEST_TIMEOUT: 10.0}
    with temporary_settings(once), get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        raise DeploymentError(f"no Prefect API answers at {masked(url)}: {failure}")
    return url


def serve(specs: list[DeploymentSpec], on_ready: Callable[[list[str]], None]) -> None:
    """Register the deployments as served from this process, call `on_ready` with their ids, then run
    their scheduled and triggered runs (each in a subprocess) until stopped; schedules pause on exit."""
    import asyncio
    import os

    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    os.chdir(PROJECT_ROOT)  # flow runs start from the entrypoint, relative to the project root
    runner = Runner(pause_on_shutdown=True)
    ids = []
    for spec in specs:
        flow = load_flow(spec.entrypoint)
        _forget_worker_deployment(f"{flow.name}/{spec.name}")
        ids.append(
            str(
                runner.add_deployment(
                    flow.to_deployment(
                        name=spec.name,
                        description=spec.description or None,
                        parameters=spec.parameters,
                        schedules=_schedules(spec),
                        triggers=[t.prefect() for t in spec.triggers],
                        tags=spec.tags,
                    )
                )
            )
        )
    on_ready(ids)
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal):
        pass


def _forget_worker_deployment(full_name: str) -> None:
    """Served deployments take over their names: one registered earlier by `fedrisk deploy` (for a
    work pool, with its pull steps) is deleted first, or its runs would look for that pool's code."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_deployment_by_name(full_name)
        except ObjectNotFound:
            return
        if existing.work_pool_name:
            client.delete_deployment(existing.id)


def ensure_work_pool(name: str) -> bool:
    """Create the process work pool `name` unless it exists; True when created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
            return True
    if pool.type != "process":
        raise DeploymentError(
            f"work pool {name!r} exists with type {pool.type!r}; fedrisk deployments need a "
            f"'process' pool (they run next to the code and data)"
        )
    return False


def deploy(specs: list[DeploymentSpec]) -> list[str]:
    """Register the deployments against the running server for their work pools; returns their ids."""
    from prefect import Flow

    ids = []
    for spec in specs:
        ensure_work_pool(spec.work_pool.name)
        source = Flow.from_source(source=str(PROJECT_ROOT), entrypoint=spec.entrypoint)
        deployment = source.to_deployment(  # applied as is: Flow.deploy printed its own tables and advice
            name=spec.name,
            work_pool_name=spec.work_pool.name,
            description=spec.description or None,
            parameters=spec.parameters,
            schedules=_schedules(spec),
            triggers=[t.prefect() for t in spec.triggers],
            tags=spec.tags,
        )
        ids.append(str(deployment.apply()))
    return ids
