"""What a person sees: `fedrisk demo` in a real pseudo-terminal, its output read as it arrives."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime

import pytest

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
    "train-federated": "training: fedavg of a logistic regression (TensorFlow Federated), up to 15 rounds",
    "train-pooled-baseline": "simulation baselines",
    "evaluate-": "evaluating the new model",
    "register-model": "registering the new version of credit_default_demo in MLflow",
}


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
def test_the_demo_in_a_terminal_is_quiet_unbroken_and_says_what_it_is_doing(demo_in_terminal):
    received, tmp_path = demo_in_terminal.received, demo_in_terminal.root
    screen = "".join(text for _, text in received)
    # The screen as separate writes of a line: a carriage return, a new line or "erase line" ends one.
    fragments = [ANSI.sub("", f) for f in re.split(r"\r|\n|\x1b\[2K", screen)]

    # No library warning or bookkeeping line: they are in the log file instead.
    for fragment in fragments:
        assert not any(noise in fragment for noise in NOISE), fragment
    log = (tmp_path / "fedrisk.log").read_text()
    assert "Finished in state Completed" in log and "round 1/15" in log
    assert "INFO prefect.task_runs register-model: Finished in state Completed()" in log  # which run it is about

    # The progress bar is shown, and nothing is ever written onto it.
    bars = [f for f in fragments if re.search(r"rounds .*━", f)]
    assert bars and any(re.search(r"\b15/15\b|\b(\d+)/15 .*validation AUC 0\.\d{4}", bar) for bar in bars)
    for bar in bars:
        assert not STAMP.search(bar) and "|" not in bar, bar

    # Never a silence longer than 10 s, from the start to the exit: where no stage line comes, a line says what
    # the command is still doing.
    moments = [demo_in_terminal.started, *(when for when, _ in received), demo_in_terminal.finished]
    texts = ["(started)", *(ANSI.sub("", text) for _, text in received), "(exited)"]
    gap, after = max((b - a, i) for i, (a, b) in enumerate(zip(moments, moments[1:])))
    assert gap <= 10, f"{gap:.1f} s of silence after {texts[after][-200:]!r}, before {texts[after + 1][:200]!r}"

    # A status line for each stage, on the screen within 10 s of the stage starting.
    starts = _stage_starts(tmp_path / "prefect" / "prefect.db")
    for prefix, line in STAGES.items():
        shown = [when for when, text in received if line in ANSI.sub("", text)]
        assert shown, f"no status line {line!r}:\n{ANSI.sub('', screen)[-4000:]}"
        assert shown[0] <= starts[prefix] + 10, (line, shown[0] - starts[prefix])
    status_lines = [f for f in fragments if any(line in f for line in STAGES.values())]
    assert all(STAMP.match(f.strip()) for f in status_lines), status_lines  # whole lines, each with its time

    # And then the summary: what was synthesized and admitted, each institution's figures and the weighted row,
    # the promotion decision with its calibration guardrail, the simulation baselines, rounds and privacy.
    shown = ANSI.sub("", screen)
    assert "Synthesized 4 institutions" in shown and "admitted" in shown and "recall@FPR" in shown
    assert re.search(r"│ alder_bank +│ 20,000 │ 126 ", shown)  # a count written one way: 20,000
    assert re.search(r"│ weighted +│ +\d{1,2},\d{3} │" + r" +0\.\d{4} │" * 6, shown), shown  # 6,800: as status lines
    assert "Registered credit_default_demo version 1 (aliases: challenger, champion)" in shown
    assert "Champion: promoted: no champion yet; challenger roc_auc 0." in shown
    assert "pass: no champion yet" not in shown  # the decision's reason, said once
    assert re.search(r"  pass: pooled ECE 0\.0\d{3} below 0\.05", shown)
    assert re.search(r"pooled ECE over all holdout rows \(the promotion guardrail's figure\): 0\.0\d{3}", shown)
    assert re.search(r"institution +┃ new model ┃ local-only ┃ pooled data", shown)
    assert len(re.findall(r"│ \w+ +│ +0\.\d{4} │ +0\.\d{4} │ +0\.\d{4} │\r?\n", shown)) == 5  # and a weighted row
    assert re.search(
        r"Trained \d+ rounds \((stopped early, before the limit of 15: validation loss stopped improving|the "
        r"limit of 15 rounds reached)\); exported round \d+, "
        r"the best by federated validation loss",
        shown,
    )
    assert "Privacy: no differential privacy" in shown
