"""The TFF execution context, backed by one C++ `worker_binary` that this process owns.

TFF's stock context starts the worker with our stdout/stderr and stops it only on garbage
collection, so it can outlive Python and hold CI's pipes open. Here the worker writes to a
log file, is told by the kernel to die with this process, and is stopped by its pid at exit.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import grpc
import portpicker
import tensorflow_federated as tff

_WORKER_BINARY = Path(tff.__file__).parent / "data" / "worker_binary"
_GRPC_MAX_BYTES = 2 * 1000 * 1000 * 1000
_GRPC_OPTIONS = [
    ("grpc.max_message_length", _GRPC_MAX_BYTES),
    ("grpc.max_receive_message_length", _GRPC_MAX_BYTES),
    ("grpc.max_send_message_length", _GRPC_MAX_BYTES),
]
_PR_SET_PDEATHSIG = 1
# glibc raises its mmap threshold as large blocks are freed, after which each round's dataset
# buffers come from a heap that fragments: the worker grew 0.6 MiB per round, still rising after
# 160 rounds. A fixed threshold returns them to the OS when freed, at no cost in round time
# (benchmarks/memory_rounds.py, round_throughput.py; upstream TFF #4590 reports the growth).
# Fewer malloc arenas also curb it, but slow rounds down by a third.
_WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}
_STARTUP_TIMEOUT_S = 60.0

_lock = threading.Lock()
_process: subprocess.Popen | None = None
_stub = None
_context_installed = False


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    """Start the worker from a thread that lives as long as the process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, and tasks run in
    short-lived threads; a daemon owner thread makes it fire only when the process ends.
    """
    started = threading.Event()
    outcome: dict = {}

    def owner() -> None:
        try:
            with open(log_path, "ab") as log:
                outcome["process"] = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                    close_fds=True,
                    env={**os.environ, **_WORKER_MALLOC},
                )
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error
        started.set()
        threading.Event().wait()

    threading.Thread(target=owner, name="tff-worker-owner", daemon=True).start()
    started.wait()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["process"]


def worker_pid() -> int | None:
    """The pid of the running TFF worker, if one is running."""
    return _process.pid if _process is not None and _process.poll() is None else None


def _ensure_worker():
    global _process, _stub
    if _stub is not None and _process is not None and _process.poll() is None and _stub.is_ready:
        return _stub
    stop_worker()
    port = portpicker.pick_unused_port()
    log_path = Path(tempfile.gettempdir()) / f"fedrisk-tff-worker-{os.getpid()}.log"
    _process = _spawn(
        [str(_WORKER_BINARY), f"--port={port}", "--max_concurrent_computation_calls=-1"],
        log_path,
    )
    channel = grpc.insecure_channel(f"localhost:{port}", _GRPC_OPTIONS)
    _stub = tff.framework.RemoteExecutorGrpcStub(channel)
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while not _stub.is_ready:
        if _process.poll() is not None:
            raise RuntimeError(
                f"TFF worker exited with code {_process.returncode} on start; see {log_path}"
            )
        if time.monotonic() > deadline:
            stop_worker()
            raise RuntimeError(f"TFF worker not ready after {_STARTUP_TIMEOUT_S:.0f}s; see {log_path}")
        time.sleep(0.1)
    return _stub


def stop_worker() -> None:
    """Stop the worker this process started (by pid), if any."""
    global _process, _stub
    process, _process, _stub = _process, None, None
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def ensure_context() -> None:
    """Install the owned C++ execution context as TFF's default (once per process)."""
    global _context_installed
    with _lock:
        if _context_installed:
            return

        def executor_stack(cardinalities):
            cardinalities.setdefault(tff.CLIENTS, 0)
            with _lock:
                stub = _ensure_worker()
            executor = tff.framework.RemoteExecutor(stub)
            executor.set_cardinalities(cardinalities)
            return executor

        context = tff.framework.SyncExecutionContext(
            executor_fn=tff.framework.ResourceManagingExecutorFactory(executor_stack_fn=executor_stack),
            compiler_fn=tff.backends.native.desugar_and_transform_to_native,
            transform_args=tff.tensorflow.transform_args,
            transform_result=tff.tensorflow.transform_result,
        )
        tff.framework.set_default_context(context)
        atexit.register(stop_worker)
        _context_installed = True
