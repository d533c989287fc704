"""Child processes this process owns: they end when it ends, however it ends, and are stopped by pid.

A server or worker we start (TFF's worker, a temporary Prefect API, XGBoost workers) must not
outlive the command that started it, even when that command is killed with SIGKILL and runs no
clean-up: the kernel sends each child SIGTERM when its parent dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

# Run in the child before it becomes `args`: ask for SIGTERM when the parent dies, give up if it
# already has, then exec. (Not a preexec_fn: around fork() CPython then takes the import and logging
# locks, and deadlocked against a thread importing TensorFlow.) The signal survives exec.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def spawn_owned(
    args: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """Start `args` with its output in `log_path`; the kernel stops it when this process ends.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, and tasks run in
    short-lived threads; a daemon owner thread that lives as long as the process forks it.
    """
    started = threading.Event()
    outcome: dict = {}

    def owner() -> None:
        try:
            with open(log_path, "ab") as log:
                outcome["process"] = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *args],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    close_fds=True,
                    env=env,
                    cwd=cwd,
                )
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error
        started.set()
        threading.Event().wait()

    threading.Thread(target=owner, name=f"owner-{Path(args[0]).name}", daemon=True).start()
    started.wait()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["process"]


def stop(process: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM a process we started (by its pid), SIGKILL it after `timeout`; gone already is fine."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
