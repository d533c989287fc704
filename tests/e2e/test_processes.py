"""hostguard.processes: nothing a `fedrisk` command starts outlives it, however it ends (a retraining killed
mid-training: tests/e2e/test_retrain.py)."""

import os
import signal
import subprocess
import sys

from tests.conftest import (
    wait_until_gone,
)


def test_an_owned_child_ends_when_its_parent_is_killed(tmp_path):
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, threading; from pathlib import Path; from hostguard.processes import spawn_owned; "
                f"child = spawn_owned(['sleep', '600'], Path({str(tmp_path / 'log')!r})); "
                "print(child.pid, flush=True); threading.Event().wait()"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
        start_new_session=True,
    )
    try:
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert wait_until_gone([child], timeout=30) == []
    finally:
        os.killpg(parent.pid, signal.SIGKILL) if parent.poll() is None else None
