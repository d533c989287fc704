"""`fedrisk node`: an institution's node, served next to its data, and its audit trail."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from errors import ExitCode
from flows.cli.common import print_error, settings
from flows.terminal import console

app = typer.Typer(
    help="An institution's node (cross-silo): serve its fixed operations next to its data.", no_args_is_help=True
)


@app.command("serve")
def serve(
    config: Path = typer.Option(
        ..., "--config", "-c", metavar="PATH", help="The node's config (YAML), kept at the institution."
    ),
) -> None:
    """Serve this institution's fixed operations to the consortium's coordinator (mutual TLS) until stopped."""
    from hostguard import loopback
    from node.config import NodeConfigError, load_node_config

    try:
        node_config = load_node_config(config)
    except NodeConfigError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None
    from hostguard.pki import PkiError, validity

    try:
        warning = validity(node_config.tls.cert)
    except PkiError as error:
        print_error(f"node {node_config.institution} does not start: {error}")
        raise typer.Exit(ExitCode.FAILED) from None
    if warning:
        console.print(f"[yellow]node {node_config.institution}: {escape(warning)}[/yellow]", highlight=False)
    isolation = None  # a node for trees starts no TFF worker
    if node_config.policy.trains_networks:
        try:
            isolation = loopback.isolation(settings().allow_exposed_worker, "TFF worker")
        except loopback.WorkerExposureRefused as error:
            print_error(error)
            raise typer.Exit(ExitCode.FAILED) from None
    from node.server import serve_until_stopped

    def listening(port: int) -> None:
        host = node_config.listen.rsplit(":", 1)[0]
        console.print(
            f"node {node_config.institution} listening on {host}:{port} (mutual TLS; answers only "
            f"'{node_config.coordinator}'); schema {node_config.schema_name}; extract "
            f"{node_config.extract.path}",
            highlight=False,
            soft_wrap=True,
        )

    try:
        serve_until_stopped(node_config, settings().expectations_dir, isolation, listening)
    except OSError as error:
        print_error(f"node {node_config.institution}: cannot listen on {node_config.listen}: {error}")
        raise typer.Exit(ExitCode.FAILED) from None


@app.command("audit")
def audit(
    config: Path = typer.Option(..., "--config", "-c", metavar="PATH", help="The node's config (YAML)."),
    last: int = typer.Option(50, "--last", min=1, help="How many of the latest requests to show."),
) -> None:
    """What this node served and refused: each request of its audit trail (work_dir/audit.jsonl), newest last."""
    from rich.table import Table

    from node.audit import AuditTrail
    from node.config import NodeConfigError, load_node_config

    try:
        node_config = load_node_config(config)
    except NodeConfigError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from None
    trail = AuditTrail(node_config.work_dir)
    entries = trail.read()
    if not entries:
        console.print(f"node {node_config.institution}: no request recorded yet in {trail.path}", highlight=False)
        return
    table = Table(
        title=f"node {node_config.institution}: the last {min(last, len(entries))} of {len(entries)} "
        f"requests ({trail.path})",
        title_justify="left",
    )
    for column in (
        "time (UTC)",
        "peer",
        "operation",
        "outcome",
        "run",
        "round",
        "epsilon",
        "bytes",
        "settings / reason",
    ):
        table.add_column(column, overflow="fold")
    for entry in entries[-last:]:
        told = entry.reason or ", ".join(f"{k} {v}" for k, v in entry.parameters.items())
        style = {"refused": "yellow", "failed": "red"}.get(entry.outcome, "")
        table.add_row(
            entry.at[:23].replace("T", " "),
            entry.peer,
            entry.operation,
            entry.outcome,
            entry.run or "",
            "" if entry.round is None else str(entry.round),
            "" if entry.epsilon is None else f"{entry.epsilon:.4f}",
            f"{entry.bytes_returned:,}",
            told,
            style=style,
        )
    console.print(table)
