"""What a node keeps on its own disk about the trainings it served, so that a restart loses nothing: its privacy
ledger (the epsilon each run spent here, refused past the institution's budget) and its round log (each round
trained once: its answer kept, the weights it started from recorded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from node.config import NodePolicy
from node.policy import NodeRefusal


def write_atomically(path: Path, data: bytes) -> None:
    """`data` at `path`, never half-written (a crash leaves the old file or the new one)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class PrivacyLedger:
    """work_dir/ledger.json: run key -> the epsilon, delta and rounds it has spent at this node."""

    def __init__(self, path: Path, institution: str, policy: NodePolicy):
        self.path, self.name, self.policy = Path(path), institution, policy

    def read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def charge(self, run_key: str, epsilon: float, delta: float, rounds: int) -> float:
        """Record that `rounds` rounds of the run spend `epsilon` here; refused past the institution's budget or
        its limit per run (nothing is recorded then, and the round is not trained)."""
        ledger = self.read()
        earlier = sum(entry["epsilon"] for key, entry in ledger.items() if key != run_key)
        budget = self.policy.privacy_budget
        if budget is not None and earlier + epsilon > budget + 1e-9:
            raise NodeRefusal(
                f"institution '{self.name}': privacy budget exceeded: round {rounds} of this run would "
                f"bring its epsilon to {epsilon:.4f} on top of {earlier:.4f} spent before, over its "
                f"budget of {budget:g} (policy.privacy_budget)"
            )
        per_run = self.policy.max_epsilon_per_run
        if per_run is not None and epsilon > per_run + 1e-9:
            raise NodeRefusal(
                f"institution '{self.name}': round {rounds} of this run would bring its epsilon to "
                f"{epsilon:.4f}, over the {per_run:g} one training may spend "
                f"(policy.max_epsilon_per_run)"
            )
        ledger[run_key] = {"epsilon": epsilon, "delta": delta, "rounds": rounds}
        write_atomically(self.path, json.dumps(ledger, indent=1).encode())
        return epsilon


class RoundLog:
    """work_dir/rounds/RUN/round_N.json (the digest of the weights it was trained from, and whether for a secure
    sum) beside round_N.msg (the answer): a round is trained once, and asked again gets the same answer."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def rounds(self, run_key: str) -> list[int]:
        """The rounds of the run trained here, in order."""
        directory = self.directory / run_key
        return sorted(int(p.stem.split("_")[1]) for p in directory.glob("round_*.json")) if directory.is_dir() else []

    def trained(self, run_key: str, round_num: int) -> tuple[dict, bytes] | None:
        """The round's record and answer, if it was trained."""
        record = self.directory / run_key / f"round_{round_num}.json"
        if not record.exists():
            return None
        return json.loads(record.read_text()), record.with_suffix(".msg").read_bytes()

    def keep(self, run_key: str, round_num: int, weights_sha256: str, secure: bool, answer: bytes) -> None:
        """Keep a trained round's answer, then its record (the record is what says the round was trained)."""
        directory = self.directory / run_key
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(directory / f"round_{round_num}.msg", answer)
        write_atomically(
            directory / f"round_{round_num}.json",
            json.dumps({"weights_sha256": weights_sha256, "secure": secure}).encode(),
        )
