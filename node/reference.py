"""The drift reference a node holds for its institution: the profile of the last extract that passed validation
here. A node that sends statistics only through secure sums sends no profile either (means, quantiles and level
shares are most of what a secure sum hides), so its drift checks run against this reference instead of one the
coordinator would have kept."""

from __future__ import annotations

import json
import os
from pathlib import Path


class Reference:
    """work_dir/reference.json: the last two distinct extracts that passed (their digests and profiles)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def for_extract(self, digest: str | None) -> dict | None:
        """The profile to check the extract `digest` against: the last accepted other extract's."""
        kept = self._read()
        current = kept.get("current") or {}
        chosen = kept.get("previous") if current.get("digest") == digest else current
        return (chosen or {}).get("profile")

    def accepted(self, digest: str, profile: dict) -> None:
        kept = self._read()
        if (kept.get("current") or {}).get("digest") != digest:
            kept = {"previous": kept.get("current"), "current": {"digest": digest, "profile": profile}}
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(json.dumps(kept))
            os.replace(partial, self.path)
