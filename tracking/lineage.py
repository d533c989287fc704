"""Lineage: the tags that tie a model version to its flow run, code, config, suite and data, and
the trace that follows them back (`fedrisk lineage NAME@ALIAS`), checking that each one resolves."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tracking.versions import (
    CONFIG_ARTIFACT,
    MODEL_CARD_ARTIFACT,
    resolve_version,
    run_page_url,
    validation_page_artifact,
    version_page_url,
)

if TYPE_CHECKING:  # `fedrisk lineage` reads tags only: no Prefect or GX at start-up
    from institution.validation import ValidationReport
    from runconfig import RunConfig


def git_state(root: Path, inputs: list[Path] = ()) -> tuple[str, bool, list[str]]:
    """The commit of the code in `root`, whether it is dirty (tracked files differ from it, or one of the run's
    `inputs` inside `root` -- its schema, suite and config files -- is not committed at all), and those
    uncommitted inputs (paths relative to `root`)."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)

    try:
        commit = git("rev-parse", "HEAD").stdout.strip()
        if not commit:
            return "unknown", False, []
        changed = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        root = Path(root).resolve()
        inside = [Path(p).resolve() for p in inputs if Path(p).resolve().is_relative_to(root)]
        untracked = [
            p.relative_to(root).as_posix() for p in inside if git("ls-files", "--error-unmatch", str(p)).returncode != 0
        ]
        return commit, changed or bool(untracked), untracked
    except (OSError, subprocess.SubprocessError):
        return "unknown", False, []


NOT_COMMITTED = "the same as the file here, but that file was not committed when the model was trained"


def config_digest(config: dict) -> str:
    """sha256 of the run config as canonical JSON: equal configs, equal digests."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def suite_file(expectations_dir: Path, suite: str) -> Path:
    return Path(expectations_dir) / "gx" / "expectations" / f"{suite}.json"


def suite_digest(expectations_dir: Path, suite: str) -> str:
    """sha256 of the suite's committed JSON: the exact checks the data passed."""
    return hashlib.sha256(suite_file(expectations_dir, suite).read_bytes()).hexdigest()


def participation_summary(rounds: list[list[int]]) -> str:
    """An institution's rounds under a deadline or a buffer in words: from one count vector per round
    (fed_models.training.PARTICIPATION: on time, late applied, late dropped, missed the deadline)."""
    totals = [sum(r[k] for r in rounds) for k in range(4)]
    on_time = sum(1 for r in rounds if r[0])
    return (
        f"an update on time in {on_time} of {len(rounds)} rounds ({totals[0]} updates); missed the deadline in "
        f"{totals[3]}; late updates applied {totals[1]}, dropped {totals[2]}"
    )


def uncounted(participation: dict[str, list[list[int]]]) -> list[str]:
    """The institutions none of whose updates counted in a training (every one arrived after its round closed and
    was dropped): the model learned nothing from their rows."""
    return [name for name, rounds in participation.items() if not sum(r[0] + r[1] for r in rounds)]


def lineage_tags(
    *,
    flow_run_id: str,
    flow_run_url: str | None,
    deployment: str | None = None,
    commit: str,
    dirty: bool,
    config: RunConfig,
    uncommitted: list[str] = (),
    suite_sha256: str,
    validation: list[ValidationReport],
    admitted: list[str],
    privacy: dict[str, str],
    worker_isolation: str,
    lost: dict[str, str] | None = None,
    engine: dict[str, str] | None = None,
    participation: dict[str, list[list[int]]] | None = None,
) -> dict[str, str]:
    """Tags for the MLflow run and model version: everything a reviewer needs to trace it back.
    `privacy` are the privacy stage's tags (mechanism, each institution's epsilon); `worker_isolation`
    how the training workers were kept off the network (or that the operator accepted they were not);
    `uncommitted` the run's schema, suite or config files that git did not track; `participation` what
    happened to each institution each round under a deadline or a buffer."""
    training, schema = config.training, config.data_schema
    from engines.registry import engine_for  # here: reading lineage (`fedrisk lineage`) needs no engine

    described = engine_for(training).architecture(config)
    tags = {
        "prefect.flow_run_id": flow_run_id,
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        **({"git.uncommitted_inputs": ", ".join(uncommitted)} if uncommitted else {}),
        "config.sha256": config_digest(config.plain()),
        "schema.name": schema.name,
        "schema.version": str(schema.version),
        "schema.sha256": schema.fingerprint(),
        "suite.name": config.suite,
        "suite.sha256": suite_sha256,
        "institutions": ",".join(admitted),
        "training.algorithm": described.algorithm,
        "training.aggregation": described.aggregation,
        "model.kind": described.kind,
        "security.worker_isolation": worker_isolation,  # TFF's worker; an engine without it says what it used
        **(engine or {"training.engine": training.engine}),
        **privacy,
        "simulation": str(config.baselines.enabled).lower(),
        "execution": "cross-silo (institution nodes, mutual TLS)" if config.cross_silo else "simulation (one process)",
    }
    for name, why in (lost or {}).items():  # an institution left out mid-training, while the quorum held
        tags[f"institution.{name}.lost"] = why[:4000]
    for name, rounds in (participation or {}).items():
        tags[f"institution.{name}.rounds"] = participation_summary(rounds)
    if flow_run_url:
        tags["prefect.flow_run_url"] = flow_run_url
    if deployment:  # which schedule or trigger started it; absent for a local run
        tags["prefect.deployment"] = deployment
    for r in validation:
        prefix = f"institution.{r.institution}"
        outcome = "passed" if r.passed else "quarantined: " + "; ".join(r.reasons)
        tags[f"{prefix}.validation"] = f"{outcome} ({r.checks_evaluated} checks, {r.checks_failed} failed)"[:4000]
        tags[f"{prefix}.rows"] = str(r.rows)
        tags[f"{prefix}.digest"] = (r.digest or "unreadable")[:16]
    return tags


@dataclass(frozen=True)
class Link:
    """One step of a version's lineage: what it is, the reference printed, and whether it resolved."""

    what: str
    reference: str
    resolved: bool
    detail: str = ""


FLOW_RUN_SOUND = ("Completed", "Running")  # a version's flow run in any other state (Failed, Crashed) is not sound


def _flow_run_state(name: str, state: str | None, where: str = "") -> tuple[bool, str]:
    """Whether the flow run that registered a version is sound, and its name and state in words."""
    detail = f"{name}, {state or 'no state'}{where}"
    if state in FLOW_RUN_SOUND:
        return True, detail
    return False, f"{detail}: the run that registered this version did not complete"


def _resolve_flow_run(flow_run_id: str) -> tuple[bool, str]:
    """The flow run, from the Prefect API when one is configured (or Prefect is already loaded here), else
    from the local Prefect database, read-only: a lookup must not start a temporary Prefect API."""
    import os
    import sys

    if not os.environ.get("PREFECT_API_URL") and "prefect.settings" not in sys.modules:
        return _flow_run_in_local_database(flow_run_id)
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
    except Exception as error:  # not found, or no Prefect API reachable
        return False, f"not found in the Prefect API ({type(error).__name__})"
    return _flow_run_state(run.name, run.state.name if run.state else None)


def _flow_run_in_local_database(flow_run_id: str) -> tuple[bool, str]:
    """Look the flow run up in the sqlite database a temporary Prefect API keeps (PREFECT_HOME/prefect.db)."""
    import os
    import sqlite3

    url = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL", "")
    if url and not url.startswith("sqlite"):
        return False, "not checked: set PREFECT_API_URL to the Prefect server that ran it"
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    database = Path(url.split(":///", 1)[1]) if url else home / "prefect.db"
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            row = connection.execute("SELECT name, state_name FROM flow_run WHERE id = ?", (flow_run_id,)).fetchone()
    except sqlite3.Error as error:
        return False, f"not found: no readable Prefect database at {database} ({error})"
    if row is None:
        return False, f"not found in the Prefect database {database} (set PREFECT_API_URL for a Prefect server)"
    return _flow_run_state(row[0], row[1], " (local Prefect database)")


def _artifact_exists(client, run_id: str, path: str) -> bool:
    parent = path.rsplit("/", 1)[0] if "/" in path else None
    return any(a.path == path for a in client.list_artifacts(run_id, parent))


def trace(
    tracking_uri: str, reference: str, project_root: Path, expectations_dir: Path, ui_url: str
) -> tuple[str, list[Link]]:
    """Follow `reference` (NAME@ALIAS or NAME/VERSION) to every recorded origin; check each one. Links are
    runs:/ URIs (they resolve wherever the store is) or pages of the MLflow UI at `ui_url`.

    Returns a headline ("name version N") and the links in order. Raises LookupError when the
    reference itself does not resolve.
    """
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    name, alias, version = parse_reference(reference)
    found = resolve_version(tracking_uri, name, alias, version)
    version, tags, run_id = str(found.version), found.tags, found.run_id
    links = [
        Link(
            "model",
            version_page_url(ui_url, name, version),
            True,
            f"{found.status}, aliases: {', '.join(found.aliases)}",
        )
    ]
    try:
        run = client.get_run(run_id)
        page = run_page_url(ui_url, run.info.experiment_id, run_id)  # each runs:/ also as the UI page that shows it
        links.append(Link("MLflow run", f"runs:/{run_id}", True, f"{run.info.run_name}, {run.info.status}; {page}"))
    except MlflowException:
        links.append(Link("MLflow run", f"runs:/{run_id}", False, "not in the tracking store"))
        return f"{name} version {version}", links
    links.append(
        Link(
            "model card",
            f"runs:/{run_id}/{MODEL_CARD_ARTIFACT}",
            _artifact_exists(client, run_id, MODEL_CARD_ARTIFACT),
            run_page_url(ui_url, run.info.experiment_id, run_id, MODEL_CARD_ARTIFACT),
        )
    )
    flow_run_id = tags.get("prefect.flow_run_id", "")
    resolved, detail = _resolve_flow_run(flow_run_id) if flow_run_id else (False, "no flow run recorded")
    if tags.get("prefect.flow_run_url"):
        detail += f"; {tags['prefect.flow_run_url']}"
    links.append(Link("Prefect flow run", flow_run_id or "-", resolved, detail))
    commit = tags.get("git.commit", "unknown")
    known = (
        subprocess.run(
            ["git", "-C", str(project_root), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True
        ).returncode
        == 0
    )
    uncommitted = tags.get("git.uncommitted_inputs", "")
    links.append(
        Link(
            "code",
            f"git {commit}",
            known,
            ("with uncommitted changes at training time" if tags.get("git.dirty") == "true" else "clean")
            + (f" (not committed: {uncommitted})" if uncommitted else "")
            + ("" if known else "; commit not in this repository"),
        )
    )
    try:
        config = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/{CONFIG_ARTIFACT}"))
        matches = config_digest(config) == tags.get("config.sha256")
        links.append(
            Link(
                "config",
                f"runs:/{run_id}/{CONFIG_ARTIFACT}",
                matches,
                f"sha256 {tags.get('config.sha256', '-')[:16]}" + ("" if matches else " does not match"),
            )
        )
    except MlflowException:
        links.append(Link("config", f"runs:/{run_id}/{CONFIG_ARTIFACT}", False, "artifact missing"))
    links.append(_schema_link(tags))
    suite = tags.get("suite.name", "-")
    path = suite_file(expectations_dir, suite)
    same = path.exists() and suite_digest(expectations_dir, suite) == tags.get("suite.sha256")
    suite_uncommitted = f"{suite}.json" in uncommitted
    links.append(
        Link(
            "suite",
            suite,
            same and not suite_uncommitted,
            f"sha256 {tags.get('suite.sha256', '-')[:16]}, "
            + (
                NOT_COMMITTED
                if same and suite_uncommitted
                else "as committed"
                if same
                else ("the committed suite has changed since" if path.exists() else "no such suite committed")
            ),
        )
    )
    for institution in [t.split(".")[1] for t in tags if t.startswith("institution.") and t.endswith(".validation")]:
        prefix = f"institution.{institution}"
        # The folder, not the file: runs registered before the self-contained page kept GX's file name there.
        folder = validation_page_artifact(institution).rsplit("/", 1)[0]
        docs = [a.path for a in client.list_artifacts(run_id, folder)]
        unreadable = tags.get(prefix + ".digest") == "unreadable"  # no checks ran, so no Data Docs page
        links.append(
            Link(
                f"institution {institution}",
                f"runs:/{run_id}/{docs[0]}" if docs else "(no Data Docs)",
                bool(docs) or unreadable,
                f"digest {tags.get(prefix + '.digest', '-')[:16]}, {tags.get(prefix + '.rows')} "
                f"rows, {tags.get(prefix + '.validation')}"
                + (f"; {run_page_url(ui_url, run.info.experiment_id, run_id, docs[0])}" if docs else ""),
            )
        )
    links.append(
        Link(
            "training",
            tags.get("training.algorithm", "-"),
            True,
            f"aggregation {tags.get('training.aggregation')}, model {tags.get('model.kind')}",
        )
    )
    links.append(_privacy_link(client, tags, version))
    isolation = tags.get("security.worker_isolation", "not recorded")
    links.append(
        Link(
            "worker isolation",
            isolation,
            True,
            "the training workers were reachable from other hosts" if isolation.startswith("none") else "",
        )
    )
    links.append(Link("promotion", tags.get("promotion.decision", "-"), True, tags.get("promotion.reason", "")))
    return f"{name} version {version}", links


def _schema_link(tags: dict[str, str]) -> Link:
    """The schema version the model was trained on, checked against the committed schema file."""
    from contract.schema import SchemaError, load_schema, schema_file

    name, version, digest = tags.get("schema.name"), tags.get("schema.version"), tags.get("schema.sha256", "")
    if not name:
        return Link("schema", "-", False, "no schema recorded")
    try:
        current = load_schema(name)
    except SchemaError as error:
        return Link("schema", f"{name} v{version}", False, str(error))
    same = str(current.version) == version and current.fingerprint() == digest
    committed = schema_file(name).relative_to(schema_file(name).parents[1]).as_posix()
    uncommitted = committed in tags.get("git.uncommitted_inputs", "")
    detail = f"sha256 {digest[:16]}, " + (
        NOT_COMMITTED
        if same and uncommitted
        else "as committed"
        if same
        else f"{committed} is now version {current.version}"
        + ("" if str(current.version) != version else " with other content")
    )
    return Link("schema", f"{name} v{version}", same and not uncommitted, detail)


def _privacy_link(client, tags: dict[str, str], version: str) -> Link:
    """The privacy spent, checked against the ledger entry that charged it (same epsilons, this version)."""
    mechanism = tags.get("privacy.mechanism", "-")
    if mechanism == "none":
        return Link("privacy", "none", True, "no differential privacy")  # said once, not "none (none (...))"
    if mechanism not in ("record_level", "client_level"):
        return Link("privacy", mechanism, True, tags.get("privacy.epsilon", ""))
    epsilons = {
        k.removeprefix("privacy.epsilon."): float(v) for k, v in tags.items() if k.startswith("privacy.epsilon.")
    }
    detail = "epsilon " + ", ".join(f"{name} {value:.4f}" for name, value in sorted(epsilons.items()))
    ledger_run = tags.get("privacy.ledger_run", "")
    try:
        entry = client.get_run(ledger_run)
        charged = {name: entry.data.metrics.get(f"epsilon.{name}") for name in epsilons}
        resolved = (
            entry.info.lifecycle_stage == "active"
            and entry.data.tags.get("ledger.version") == version
            and all(charged[n] is not None and abs(charged[n] - epsilons[n]) < 1e-4 for n in epsilons)
        )
        if not resolved:
            detail += "; the ledger entry does not show these charges for this version"
    except Exception:  # the ledger entry is gone
        resolved = False
        detail += "; ledger entry not found"
    return Link("privacy", f"{mechanism}, ledger runs:/{ledger_run}", resolved, detail)


def parse_reference(reference: str) -> tuple[str, str | None, str | None]:
    """NAME@ALIAS -> (name, alias, None); NAME/VERSION -> (name, None, version)."""
    if "@" in reference:
        name, alias = reference.split("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in reference:
        name, version = reference.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise ValueError(
        f"model reference {reference!r} must be NAME@ALIAS (e.g. credit_default@champion) "
        f"or NAME/VERSION (e.g. credit_default/3)"
    )
