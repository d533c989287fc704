"""`fedrisk serve`, `deploy`, `trigger`: the deployments of prefect.yaml on a Prefect server."""

from __future__ import annotations

from pathlib import Path

import typer

from errors import ExitCode
from flows.cli.common import print_error, settings
from flows.settings import PROJECT_ROOT
from flows.terminal import console
from hostguard.credentials import masked


def _deployments(prefect_file: Path):
    from flows.deployments import DeploymentError, load_deployments, require_server

    try:
        specs = load_deployments(prefect_file)
        url = require_server()
    except DeploymentError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None
    return specs, url


def _schedule_text(spec) -> str:
    """When a deployment runs: its schedules, and the events that start it."""
    when = [f"cron '{s.cron}' ({s.timezone})" + ("" if s.active else ", paused") for s in spec.schedules]
    when += [f"on event {', '.join(t.expect)}" for t in spec.triggers if t.enabled]
    return "; ".join(when) or "no schedule (trigger only)"


PREFECT_FILE_OPTION = typer.Option(
    PROJECT_ROOT / "prefect.yaml", "--prefect-file", metavar="PATH", help="Deployments to use."
)


def serve(prefect_file: Path = PREFECT_FILE_OPTION) -> None:
    """Serve the deployments of prefect.yaml on their schedules from this process (no work pool); Ctrl-C stops."""
    from flows.deployments import serve as serve_deployments

    specs, url = _deployments(prefect_file)

    def ready(ids: list[str]) -> None:
        for spec in specs:
            console.print(f"serving [bold]{spec.full_name}[/bold]: {_schedule_text(spec)}", highlight=False)
        console.print(
            f"Prefect API {masked(url)}: scheduled and triggered runs start in this process; Ctrl-C stops it "
            f"(and pauses the schedules). Trigger one: fedrisk trigger {specs[0].name}",
            highlight=False,
        )

    serve_deployments(specs, ready)


def deploy(prefect_file: Path = PREFECT_FILE_OPTION) -> None:
    """Register the deployments of prefect.yaml on the running Prefect server, for a process worker to run."""
    from flows.deployments import DeploymentError
    from flows.deployments import deploy as deploy_deployments

    specs, url = _deployments(prefect_file)
    try:
        deploy_deployments(specs)
    except DeploymentError as error:
        print_error(error)
        raise typer.Exit(ExitCode.FAILED) from None
    for spec in specs:
        console.print(
            f"deployed [bold]{spec.full_name}[/bold] to work pool {spec.work_pool.name}: {_schedule_text(spec)}",
            highlight=False,
        )
    pools = sorted({s.work_pool.name for s in specs})
    console.print("Runs wait for a worker: " + "; ".join(f"prefect worker start --pool {p}" for p in pools))


def trigger(
    deployment: str = typer.Argument(..., help="Deployment name (credit-default-weekly) or FLOW/DEPLOYMENT."),
    param: list[str] = typer.Option(
        [],
        "--param",
        "-p",
        metavar="KEY=VALUE",
        help="KEY=VALUE: config_file=..., or a dotted config key such as training.rounds=5 (repeatable).",
    ),
    timeout: float = typer.Option(
        None,
        "--timeout",
        min=0,
        metavar="SECONDS",
        help="Stop following after this many seconds (the run goes on); exit code 5.",
    ),
) -> None:
    """Start a run of a deployment on the Prefect server and follow it to the end.

    Exit code: 0 completed, 1 failed, 2 refused before starting (bad parameter or config, unknown deployment, no
    server), 3 crashed, 4 cancelled, 5 still running when --timeout passed.
    """
    from flows.config import ConfigError, load_config
    from flows.deployments import DeploymentError, require_server
    from flows.retrain import flow_run_url, resolve_config_file
    from flows.terminal import is_status_line, verbose
    from flows.trigger import EXIT_CODES, STILL_RUNNING_EXIT_CODE, find_deployment, follow, parse_params, start

    try:
        require_server()
        target = find_deployment(deployment)
        parameters = parse_params(param, set(target.parameter_openapi_schema.get("properties", {})))
        merged = {**target.parameters, **parameters}
        config_file = resolve_config_file(str(merged.get("config_file", "")))
        if config_file.is_file():  # checked here too, so a bad override never reaches the worker
            load_config(config_file, merged.get("overrides") or {}, expectations_dir=settings().expectations_dir)
    except (DeploymentError, ConfigError, ValueError) as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None
    run = start(target, parameters)
    page = flow_run_url(run.id)
    console.print(f"Started flow run [bold]{run.name}[/bold] ({run.id}) of {deployment}: {page}", highlight=False)

    def on_log(log) -> None:  # the run's status lines; libraries' lines and bookkeeping stay in the Prefect UI
        if verbose() or is_status_line(log.name, log.level, log.message):
            console.print(f"{log.timestamp:%H:%M:%S} {log.message}", highlight=False, markup=False)

    def on_state(state: str) -> None:
        console.print(f"[bold]state: {state}[/bold]")
        if state == "Late":
            pools = f"prefect worker start --pool {target.work_pool_name}" if target.work_pool_name else None
            console.print(
                "nothing has picked the run up yet: is `fedrisk serve` running"
                + (f", or `{pools}`?" if pools else "?"),
                highlight=False,
            )

    finished = follow(run.id, on_log, on_state, timeout_seconds=timeout)
    if finished is None:
        console.print(f"still running after {timeout:g} s; follow it in the Prefect UI: {page}", highlight=False)
        raise typer.Exit(STILL_RUNNING_EXIT_CODE)
    if finished.summary and console.is_terminal:
        from rich.markdown import Markdown

        console.print(Markdown(finished.summary))
    elif finished.summary:  # piped or logged: the summary's own Markdown, not centred across 4,096 columns
        console.print(finished.summary, markup=False, highlight=False)
    colour = "green" if finished.state == "COMPLETED" else "red"
    console.print(f"[{colour}]{finished.name}: {finished.state}[/{colour}] {finished.message}", highlight=False)
    raise typer.Exit(EXIT_CODES.get(finished.state, ExitCode.FAILED))
