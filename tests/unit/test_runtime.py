"""fed_models.runtime: the TFF worker is ours, and stopped by its pid."""

import os

import numpy as np
import pytest

from fed_models import runtime
from fed_models.training import ClientData, TrainingSpec, train


def test_worker_is_owned_and_stopped_by_pid():
    rng = np.random.default_rng(0)
    client = ClientData("a", rng.normal(size=(50, 2)), rng.integers(0, 2, 50).astype(float))
    train([client], np.zeros(2), np.ones(2), TrainingSpec(rounds=1))
    pid = runtime.worker_pid()
    assert pid is not None
    os.kill(pid, 0)  # alive
    runtime.stop_worker()
    assert runtime.worker_pid() is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    # The next computation starts a fresh worker.
    train([client], np.zeros(2), np.ones(2), TrainingSpec(rounds=1))
    assert runtime.worker_pid() not in (None, pid)
