"""Per-round program state on disk, so a killed training resumes at its last round.

TFF's `FileProgramStateManager` writes each round as a TensorFlow SavedModel, and every save
traces new functions that the process keeps: 1.6 MiB more resident memory per round, +50 % over
300 rounds (benchmarks/memory_rounds.py). The state is a flat list of arrays, so this manager
writes each version as one .npz file instead, atomically, behind the same TFF interface.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

_VERSION_FILE = re.compile(r"^program_state_(\d+)\.npz$")


class ArrayStateManager(tff.program.ProgramStateManager):
    """Program state (a flat list of arrays) as `program_state_N.npz` files under `root_dir`; the latest
    `keep_total` are kept."""

    def __init__(self, root_dir: Path, keep_total: int = 2):
        if keep_total < 1:
            raise ValueError("keep_total must be at least 1")
        self._root = Path(root_dir)
        self._root.mkdir(parents=True, exist_ok=True)
        self._keep_total = keep_total

    def _path(self, version: int) -> Path:
        return self._root / f"program_state_{version}.npz"

    async def get_versions(self) -> list[int] | None:
        versions = sorted(int(m.group(1)) for f in self._root.iterdir() if (m := _VERSION_FILE.match(f.name)))
        return versions or None

    async def load(self, version: int, structure):
        path = self._path(version)
        if not path.exists():
            raise tff.program.ProgramStateNotFoundError(version)
        with np.load(path, allow_pickle=False) as saved:
            arrays = [saved[f"leaf_{i}"] for i in range(len(saved.files))]
        if len(arrays) != len(structure):
            raise ValueError(f"{path} holds {len(arrays)} arrays, the program state has {len(structure)}")
        return arrays

    async def save(self, program_state, version: int) -> None:
        path = self._path(version)
        if path.exists():
            raise tff.program.ProgramStateExistsError(version=version, path=str(self._root))
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as handle:
            np.savez(handle, **{f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(program_state)})
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)  # a crash mid-write leaves the previous version intact
        for old in (await self.get_versions() or [])[: -self._keep_total]:
            self._path(old).unlink(missing_ok=True)


class Checkpoints:
    """The training's program state under `directory`, tied to what decides the weights (`fingerprint`)."""

    def __init__(self, directory: Path, fingerprint: dict):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        spec_file = self.directory / "spec.json"
        text = json.dumps(fingerprint, sort_keys=True, default=str)
        if spec_file.exists() and spec_file.read_text() != text:
            raise ValueError(
                f"checkpoints in {self.directory} belong to a different training spec or data; "
                "use another directory or delete it"
            )
        spec_file.write_text(text)
        self._manager = ArrayStateManager(self.directory, keep_total=2)

    def load(self, template):
        """The latest saved state shaped like `template`, or None when nothing was saved yet."""
        flat, _ = asyncio.run(self._manager.load_latest(tf.nest.flatten(template)))
        return None if flat is None else tf.nest.pack_sequence_as(template, list(flat))

    def save(self, program_state, round_num: int) -> None:
        asyncio.run(self._manager.save([np.asarray(leaf) for leaf in tf.nest.flatten(program_state)], round_num))
