"""The node's record of every input it added to a secure sum: one sum per input.

A second sum over the same input, with other participants, would let the coordinator subtract two sums and
read that input; so the node records each input (its operation, run, round and the digest of its exact
values) the moment its masked form leaves, on its own disk, and refuses any other session over it. A retry of
the same session gets the same answer (the session's state) or, after a restart, is refused.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Contribution:
    """One input this node added to a secure sum."""

    digest: str  # node.secure.input_digest: the operation and the exact values
    session: str
    operation: str
    description: str  # what the input is, in words ("round 3 of run R", "statistics of extract ...")
    participants: tuple[str, ...]
    at: str


class SecureInputs:
    """The append-only JSON-lines record in the node's work directory, read once at start."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.by_digest: dict[str, Contribution] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    plain = json.loads(line)
                    contribution = Contribution(**{**plain, "participants": tuple(plain["participants"])})
                    self.by_digest[contribution.digest] = contribution

    def earlier(self, digest: str, session: str) -> Contribution | None:
        """The contribution of the same input to another session, if there was one."""
        found = self.by_digest.get(digest)
        return found if found is not None and found.session != session else None

    def record(
        self, digest: str, session: str, operation: str, description: str, participants: tuple[str, ...]
    ) -> Contribution | None:
        """Record the input as added to `session` (durably, before its masked form leaves); return the earlier
        contribution to another session instead, when there is one (nothing recorded then)."""
        with self.lock:
            earlier = self.earlier(digest, session)
            if earlier is not None or digest in self.by_digest:
                return earlier
            contribution = Contribution(
                digest,
                session,
                operation,
                description,
                tuple(participants),
                datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as log:
                log.write(json.dumps(asdict(contribution)) + "\n")
                log.flush()
                os.fsync(log.fileno())
            self.by_digest[digest] = contribution
            return None
