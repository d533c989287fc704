"""What a person sees in the terminal: one Rich console that owns the screen, a status line as each stage
of a retraining starts, the round progress bar, and the libraries' own chatter (TensorFlow, Keras, MLflow,
Prefect's bookkeeping) kept off the screen, in the log file, unless --verbose asks for it."""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from logging.handlers import RotatingFileHandler
from pathlib import Path

from rich.console import Console

# A terminal gets Rich's own width; output that is piped or logged (CI, `| tee`, a scheduler) gets tables at
# their full width, so that no figure, status or path is ever cut to fit 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=4096, soft_wrap=False)

_settings = {"verbose": False}
# What the flow and its tasks say about the run; at a node, what it served and refused (its audit trail); what an
# institution reads about its own extract (example values: its screen and log file, never Prefect's API); who the
# trees' admission gate refused.
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "fedrisk.node", "fedrisk.institution", "fedrisk.trees")
# Prefect's bookkeeping about its own runs: in the Prefect UI and the log file, not a status line.
_BOOKKEEPING = re.compile(
    r"^(Beginning (sub)?flow run|Finished in state|Created (task|flow) run|Executing|"
    r"View at|Submitting task|Running on|Task run .* received|Downloading flow code|"
    r"Opening process|Process for flow run)"
)


class RunFormatter(logging.Formatter):
    """The log file's line, naming the Prefect task or flow run it comes from (`prefect.task_runs register-model:
    Finished in state Completed()`): Prefect's own lines do not say which run they are about."""

    def format(self, record: logging.LogRecord) -> str:
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        record.run = f" {run}" if run else ""
        return super().format(record)


class TerminalHandler(logging.Handler):
    """Prints the run's status lines through the console (so they appear above a live progress bar, never
    glued to it); everything else a library logs is left to the log file, or shown too with `verbose`."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(logging.INFO)
        self.verbose = verbose
        self.setFormatter(logging.Formatter("%(message)s"))

    def shows(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        from tasks.training import ROUND_RECORD  # imported by now: only a run logs on these loggers

        if getattr(record, ROUND_RECORD, False) and console.is_terminal:
            return False  # the progress bar shows it
        return is_status_line(record.name, record.levelno, record.getMessage())

    def emit(self, record: logging.LogRecord) -> None:
        if not self.shows(record):
            return
        try:
            message = record.getMessage().splitlines()[0] if not self.verbose else self.format(record)
            source = record.name if self.verbose and not record.name.startswith(RUN_LOGGERS) else ""
            _line(record.created, message, "yellow" if record.levelno >= logging.WARNING else "dim", source)
        except Exception:  # never let the screen break a run
            self.handleError(record)


def verbose() -> bool:
    """Whether this command was asked (--verbose) to show the libraries' lines too."""
    return _settings["verbose"]


def is_status_line(logger: str, level: int, message: str) -> bool:
    """Whether a log line of a run belongs on the screen: what the flow and its tasks say about the run, not a
    library's line, not Prefect's bookkeeping, and not a failure's traceback (the command says why it stopped)."""
    return logger.startswith(RUN_LOGGERS) and level < logging.ERROR and not _BOOKKEEPING.match(message)


def _line(created: float, message: str, style: str = "dim", source: str = "") -> None:
    """One status line, written in one piece (a live progress bar is redrawn below it, never on it); what the
    command is doing from now on, as far as the heartbeat can tell."""
    _print_line(created, message, style, source)
    heartbeat.said(message.splitlines()[0] if message else None)


def _print_line(created: float, message: str, style: str = "dim", source: str = "") -> None:
    from rich.text import Text

    parts = [(time.strftime("%H:%M:%S", time.localtime(created)), style), " "]
    if source:
        parts += [(source, "dim"), " "]
    console.print(Text.assemble(*parts, message), highlight=False, soft_wrap=True)


def status(message: str) -> None:
    """A status line from the command itself (before a flow runs: data synthesis, the Prefect API)."""
    _line(time.time(), message)


QUIET_SECONDS = 7.0  # on a terminal, never longer than this without a line (the bar counts: it moves)


class Heartbeat:
    """On a terminal, a line after every QUIET_SECONDS without one, saying what the command is still doing and
    for how long ("still: evaluating the new model ... (14 s)"), so that no one watches a silent screen; paused
    while the progress bar moves. Piped or logged output gets none: its status lines have their times."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = self._since = time.monotonic()
        self._activity: str | None = None
        self.paused = False
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def said(self, activity: str | None = None, wrote: bool = True) -> None:
        """Something was written (`wrote`); `activity`: what the command is doing from now on."""
        with self._lock:
            now = time.monotonic()
            if wrote:
                self._last = now
            if activity:
                # "promoted: ...; registering the new version ...": what it does is the last clause
                self._activity, self._since = activity.rsplit("; ", 1)[-1], now

    def start(self) -> None:
        if self._thread is None and console.is_terminal:
            self._thread = threading.Thread(target=self._beat, name="terminal-heartbeat", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _beat(self) -> None:
        while not self._stopped.wait(0.5):
            with self._lock:
                now = time.monotonic()
                due = bool(self._activity) and not self.paused and now - self._last >= QUIET_SECONDS
                if due:
                    self._last = now
                    line = f"still: {_shortened(self._activity or '')} ({now - self._since:.0f} s)"
            if due:
                try:
                    _print_line(time.time(), line)
                except Exception:  # never let the screen break a run
                    return


def _shortened(activity: str, limit: int = 90) -> str:
    return activity if len(activity) <= limit else activity[: limit - 1] + "…"


heartbeat = Heartbeat()


def activity(what: str) -> None:
    """What the command does next, for the heartbeat, where no status line says it (the screen shows it only
    if it takes a while). The first call starts the heartbeat: a command that works towards an end (a retraining),
    not a server that waits for requests (`fedrisk node serve`, `fedrisk serve`), whose quiet is no silence."""
    heartbeat.start()
    heartbeat.said(what, wrote=False)


def set_up(verbose: bool, log_file: Path) -> None:
    """Route this command's logging before Prefect, MLflow or TensorFlow are imported: status lines to the
    screen, everything at INFO and above to `log_file`; with `verbose`, everything on the screen too,
    TensorFlow's C++ warnings included."""
    _settings["verbose"] = verbose
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # MLflow's lines reach the handlers below
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, (TerminalHandler, RotatingFileHandler)):
            root.removeHandler(handler)
    root.addHandler(TerminalHandler(verbose))
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = RotatingFileHandler(log_file, maxBytes=5_000_000, backupCount=3)
        to_file.setLevel(logging.INFO)
        to_file.setFormatter(RunFormatter("%(asctime)s %(levelname)s %(name)s%(run)s: %(message)s"))
        root.addHandler(to_file)
    except OSError:  # a read-only checkout still runs; its logs stay in Prefect
        pass
    for name in ("mlflow", "tensorflow", "absl", "py.warnings", "fedrisk"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.captureWarnings(True)


class _MlflowEvents:
    """Where MLflow's own event lines go: the "mlflow" logger (the log file; the screen with --verbose)."""

    def write(self, text: str) -> None:
        if text.strip():
            logging.getLogger("mlflow").info(text.strip())

    def flush(self) -> None:
        pass


def quiet_mlflow() -> None:
    """MLflow prints some events itself, past logging ("Successfully registered model ...", "Created version
    ..."), to a stream of its own that its autologging switches back on; send that stream to logging instead
    (a retraining's status lines say the same)."""
    from mlflow.utils import logging_utils

    logging_utils.MLFLOW_LOGGING_STREAM = _MlflowEvents()


@contextmanager
def round_progress() -> Iterator[None]:
    """On a terminal, a progress bar over federated rounds with the latest loss and AUC while training runs
    here, shown from the moment training starts (round 0) and closed when it ends."""
    if not console.is_terminal:  # piped or logged: the rounds' own status lines tell the same
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tasks.training import round_listener

    progress = Progress(
        TextColumn("[bold]rounds"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[latest]}"),
        console=console,
        transient=False,
    )
    bar: dict = {}

    def on_round(m: dict) -> None:
        if "task" not in bar:
            heartbeat.paused = True  # the bar moves: the screen is not silent
            progress.start()
            bar["task"] = progress.add_task("rounds", total=m["max_rounds"], latest="starting the training engine")
        if m["event"] == "round":
            train = "" if math.isnan(m.get("loss", math.nan)) else f"train loss {m['loss']:.4f}  "  # not DP, trees
            latest = f"{train}validation loss {m['validation_loss']:.4f}  validation AUC {m['validation_auc']:.4f}"
            progress.update(bar["task"], completed=m["round"], latest=latest)
        elif m["event"] == "end":
            close()

    def close() -> None:
        if "task" in bar and not bar.get("closed"):
            progress.update(bar["task"], total=progress.tasks[0].completed)  # early stop ends the bar
            progress.stop()
            bar["closed"] = True
            heartbeat.paused = False
            heartbeat.said()

    with round_listener(on_round):
        try:
            yield
        finally:
            close()
