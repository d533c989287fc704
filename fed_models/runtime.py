"""The TFF execution context, backed by one C++ `worker_binary` that this process owns.

TFF's stock context starts the worker with our stdout/stderr and stops it only on garbage
collection, so it can outlive Python and hold CI's pipes open. Here the worker writes to a
log file, is told by the kernel to die with this process, and is stopped by its pid at exit.
The worker executes any computation sent to it, so it listens on loopback only (hostguard):
without a way to ensure that, it is not started, unless the operator accepted the exposure.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import grpc
import portpicker
import tensorflow_federated as tff

from hostguard import loopback
from hostguard.processes import spawn_owned, stop

_WORKER_BINARY = Path(tff.__file__).parent / "data" / "worker_binary"
_GRPC_MAX_BYTES = 2 * 1000 * 1000 * 1000
_GRPC_OPTIONS = [
    ("grpc.max_message_length", _GRPC_MAX_BYTES),
    ("grpc.max_receive_message_length", _GRPC_MAX_BYTES),
    ("grpc.max_send_message_length", _GRPC_MAX_BYTES),
]
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
_context = None
_installed = threading.local()  # whether this thread's TFF context stack has it
_isolation: loopback.Isolation | None = None


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
    _process = spawn_owned(
        [str(_WORKER_BINARY), f"--port={port}", "--max_concurrent_computation_calls=-1"],
        log_path,
        env={**os.environ, **_WORKER_MALLOC, **_isolation.environment()},
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", _GRPC_OPTIONS)
    _stub = tff.framework.RemoteExecutorGrpcStub(channel)
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while not _stub.is_ready:
        if _process.poll() is not None:
            raise RuntimeError(f"TFF worker exited with code {_process.returncode} on start; see {log_path}")
        if time.monotonic() > deadline:
            stop_worker()
            raise RuntimeError(f"TFF worker not ready after {_STARTUP_TIMEOUT_S:.0f}s; see {log_path}")
        time.sleep(0.1)
    if not _isolation.exposed:
        try:
            loopback.require_loopback(_process.pid, "TFF worker")
        except loopback.WorkerExposureRefused:
            stop_worker()
            raise
    return _stub


def stop_worker() -> None:
    """Stop the worker this process started (by pid), if any."""
    global _process, _stub
    process, _process, _stub = _process, None, None
    stop(process)


def ensure_context(isolation: loopback.Isolation | None = None) -> None:
    """Install the owned C++ execution context as TFF's default in this thread (TFF's context stack is per
    thread; the context and its worker are one per process).

    `isolation` is how the worker is kept off the network; by default the loopback library, and
    WorkerExposureRefused where it cannot be built. A different isolation restarts the worker.
    """
    global _context, _isolation
    with _lock:
        wanted = isolation or _isolation or loopback.isolation(allow_exposed=False)
        if wanted != _isolation:
            stop_worker()
            _isolation = wanted
        if _context is None:

            def executor_stack(cardinalities):
                cardinalities.setdefault(tff.CLIENTS, 0)
                with _lock:
                    stub = _ensure_worker()
                executor = tff.framework.RemoteExecutor(stub)
                executor.set_cardinalities(cardinalities)
                return executor

            _context = tff.framework.SyncExecutionContext(
                executor_fn=tff.framework.ResourceManagingExecutorFactory(executor_stack_fn=executor_stack),
                compiler_fn=tff.backends.native.desugar_and_transform_to_native,
                transform_args=tff.tensorflow.transform_args,
                transform_result=tff.tensorflow.transform_result,
            )
            atexit.register(stop_worker)
        if not getattr(_installed, "done", False):
            tff.framework.set_default_context(_context)
            _installed.done = True
