"""The node's audit trail: every request it served, refused or failed, one JSON line each in
`work_dir/audit.jsonl`, and a line in the node's log. The institution's own record of what the coordinator asked
and what left it (operation, run, round, the request's settings, epsilon charged, bytes returned, the peer's
certificate name), for its risk committee; it stays at the node.

Only settings are recorded, never arrays (weights, models) or key material.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

AUDIT_FILE = "audit.jsonl"
log = logging.getLogger("fedrisk.node")


@dataclass(frozen=True)
class AuditEntry:
    """One request, as the node saw it."""

    at: str
    peer: str  # the client certificate's name (CN)
    operation: str
    outcome: str  # served | refused | failed
    run: str | None
    round: int | None
    parameters: dict
    epsilon: float | None  # privacy charged by this request (its run's total at this node)
    bytes_returned: int
    reason: str | None  # why it was refused or failed

    def line(self) -> str:
        where = " ".join(f"{k} {v}" for k, v in (("run", self.run), ("round", self.round)) if v is not None)
        charged = f", epsilon {self.epsilon:.4f}" if self.epsilon else ""
        told = f": {self.reason}" if self.reason else f" ({self.bytes_returned:,} bytes{charged})"
        peer = self.peer or "an unnamed client"
        return f"{self.outcome} {self.operation} for {peer}{' ' + where if where else ''}{told}"


def _secure(request: dict) -> dict:
    inner = request.get("request") or {}
    found = {
        "session": request.get("session"),
        "adds": request.get("added"),
        "participants": request.get("participants"),
        "threshold": request.get("threshold"),
        "senders": request.get("sent"),
    }
    return {
        **{k: v for k, v in found.items() if v is not None},
        **({"inner_run": inner["run_key"]} if "run_key" in inner else {}),
        **({"inner_round": inner["round"]} if "round" in inner else {}),
    }


def summary(operation: str, request) -> tuple[str | None, int | None, dict]:
    """The run, round and settings of a request worth keeping (no arrays, no models, no keys)."""
    if not isinstance(request, dict):
        return None, None, {}
    inner = request.get("request") if isinstance(request.get("request"), dict) else {}
    run = request.get("run_key") or inner.get("run_key")
    round_num = request.get("round", inner.get("round"))
    spec = request.get("spec") if isinstance(request.get("spec"), dict) else {}
    schema = request.get("schema") or inner.get("schema")
    parameters: dict = {"schema": f"{schema.get('name')} v{schema.get('version')}"} if isinstance(schema, dict) else {}
    if operation == "Statistics":
        parameters.update(features=len(request.get("features") or []), split=request.get("split"))
    elif operation == "Prepare":
        model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
        privacy = spec.get("privacy")
        parameters.update(
            rounds=spec.get("rounds"),
            model=model.get("kind"),
            privacy=privacy.get("kind") if isinstance(privacy, dict) else privacy,
            delta=request.get("delta"),
            secure_aggregation=bool(request.get("secure_aggregation")),
            secure_encoding=request.get("secure_encoding"),
        )
    elif operation == "TrainRound":
        parameters.update(client_seed=request.get("client_seed"))
    elif operation == "TrainTrees":
        parameters.update(
            rounds=spec.get("rounds"),
            rank=request.get("rank"),
            world_size=request.get("world_size"),
            server=request.get("server"),
        )
    elif operation == "Evaluate":
        parameters.update(models=sorted((request.get("models") or {}).keys()))
    elif operation.startswith("Secure"):
        parameters.update(_secure(request))
    return (
        str(run) if run is not None else None,
        int(round_num) if isinstance(round_num, int) else None,
        {k: v for k, v in parameters.items() if v is not None},
    )


class AuditTrail:
    """The append-only audit file of one node (appends from the server's threads are serialized)."""

    def __init__(self, work_dir: Path):
        self.path = Path(work_dir) / AUDIT_FILE
        self.lock = threading.Lock()

    def record(
        self,
        peer: str,
        operation: str,
        request,
        outcome: str,
        bytes_returned: int = 0,
        epsilon: float | None = None,
        reason: str | None = None,
    ) -> AuditEntry:
        run, round_num, parameters = summary(operation, request)
        entry = AuditEntry(
            datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            peer,
            operation,
            outcome,
            run,
            round_num,
            parameters,
            epsilon,
            bytes_returned,
            reason,
        )
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as trail:
                trail.write(json.dumps(asdict(entry), default=str) + "\n")
        (log.info if outcome == "served" else log.warning)("%s", entry.line())
        return entry

    def read(self) -> list[AuditEntry]:
        if not self.path.exists():
            return []
        return [
            AuditEntry(**json.loads(line))
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
