"""What a person sees: `fedrisk demo` in a real pseudo-terminal, its output read as it arrives."""

from __future__ import annotations

import fcntl
import os
import re
import select
import sqlite3
import struct
import subprocess
import termios
import time
from datetime import UTC, datetime

import pytest

from tests.conftest import FEDRISK, cli_environment

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
NOISE = (
    "Unable to register",
    "cuDNN",
    "cuFFT",
    "cuBLAS",
    "HDF5",
    "legacy",
    "compiled metrics",
    "UserWarning",
    "Detected uv project",
    "pip version",
    "uv.lock",
    "already exists",
    "WARNING |",
    "INFO |",
    "tensorflow/",
    "Traceback",
    "py.warnings",
    "Finished in state",
)
STAMP = re.compile(r"\d\d:\d\d:\d\d ")  # a status line starts with the time of day (the bar's clock is H:MM:SS)
# Each stage of the retraining (how Prefect names its first run) and the status line that must announce it.
STAGES = {
    "validate-credit_default_demo": "validating 4 institutions against suite credit_default_v2",
    "statistics-": "federated statistics of 4 institutions",
    "train-federated-": "training: fedavg of a logistic regression (TensorFlow Federated), up to 15 rounds",
    "train-pooled-baseline-": "simulation baselines",
    "evaluate-": "evaluating the new model",
    "register-model-": "registering the new version of credit_default_demo in MLflow",
}


def _run_in_terminal(command: list[str], env: dict[str, str], columns: int = 160) -> list[tuple[float, str]]:
    """Run `command` on a pseudo-terminal of `columns` columns; return what it wrote, as (wall time, text)
    in the order it arrived."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(
        command, stdin=terminal, stdout=terminal, stderr=terminal, env=env, start_new_session=True
    )
    os.close(terminal)
    received: list[tuple[float, str]] = []
    try:
        while True:
            if select.select([controller], [], [], 600)[0]:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the terminal's last writer has gone
                    break
                if not chunk:
                    break
                received.append((time.time(), chunk.decode(errors="replace")))
            else:
                raise AssertionError("no output for 600 s:\n" + "".join(t for _, t in received)[-3000:])
    finally:
        os.close(controller)
        try:
            os.killpg(process.pid, 15)
        except ProcessLookupError:
            pass
        process.wait(timeout=60)
    assert process.returncode == 0, "".join(t for _, t in received)[-5000:]
    return received


def _stage_starts(prefect_database) -> dict[str, float]:
    """When each stage's first flow or task run started, from the Prefect database the demo's API kept."""
    with sqlite3.connect(prefect_database) as db:
        runs = db.execute("SELECT name, start_time FROM flow_run UNION ALL SELECT name, start_time FROM task_run")
        started = [(name, datetime.fromisoformat(str(when))) for name, when in runs if when]
    starts = {}
    for prefix in STAGES:
        times = [when if when.tzinfo else when.replace(tzinfo=UTC) for name, when in started if name.startswith(prefix)]
        assert times, f"no run of stage {prefix} in {prefect_database}"
        starts[prefix] = min(times).timestamp()
    return starts


@pytest.mark.slow
def test_the_demo_in_a_terminal_is_quiet_unbroken_and_says_what_it_is_doing(tmp_path):
    env = cli_environment(
        tmp_path,
        TERM="xterm-256color",
        COLUMNS="160",
        FEDRISK_DEMO_DATA_DIR=str(tmp_path / "demo"),
        FEDRISK_RUNS_DIR=str(tmp_path / "runs"),
        FEDRISK_LOG_FILE=str(tmp_path / "fedrisk.log"),
    )
    received = _run_in_terminal([FEDRISK, "demo"], env)
    screen = "".join(text for _, text in received)
    # The screen as separate writes of a line: a carriage return, a new line or "erase line" ends one.
    fragments = [ANSI.sub("", f) for f in re.split(r"\r|\n|\x1b\[2K", screen)]

    # No library warning or bookkeeping line: they are in the log file instead.
    for fragment in fragments:
        assert not any(noise in fragment for noise in NOISE), fragment
    log = (tmp_path / "fedrisk.log").read_text()
    assert "Finished in state Completed" in log and "round 1/15" in log

    # The progress bar is shown, and nothing is ever written onto it.
    bars = [f for f in fragments if re.search(r"rounds .*━", f)]
    assert bars and any(re.search(r"\b15/15\b|\b(\d+)/15 .*validation AUC 0\.\d{4}", bar) for bar in bars)
    for bar in bars:
        assert not STAMP.search(bar) and "|" not in bar, bar

    # A status line for each stage, on the screen within 10 s of the stage starting.
    starts = _stage_starts(tmp_path / "prefect" / "prefect.db")
    for prefix, line in STAGES.items():
        shown = [when for when, text in received if line in ANSI.sub("", text)]
        assert shown, f"no status line {line!r}:\n{ANSI.sub('', screen)[-4000:]}"
        assert shown[0] <= starts[prefix] + 10, (line, shown[0] - starts[prefix])
    status_lines = [f for f in fragments if any(line in f for line in STAGES.values())]
    assert all(STAMP.match(f.strip()) for f in status_lines), status_lines  # whole lines, each with its time

    # And then the summary, as before.
    assert "Registered credit_default_demo version 1 (aliases: challenger, champion)" in ANSI.sub("", screen)
