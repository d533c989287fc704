"""Per-round program state: saved as arrays, the latest loaded back, older versions pruned, tied to its spec."""

import asyncio

import numpy as np
import pytest
import tensorflow_federated as tff

from fed_models.checkpoints import ArrayStateManager, Checkpoints

STATE = {
    "learning": [np.arange(6, dtype=np.float32).reshape(2, 3), np.float32(0.5)],
    "history": np.zeros((0, 4)),
    "best": np.array([np.inf, 0, 0]),
}


def test_the_latest_state_comes_back_exactly_and_only_two_are_kept(tmp_path):
    checkpoints = Checkpoints(tmp_path, {"spec": 1})
    assert checkpoints.load(STATE) is None
    for round_num in (1, 2, 3):
        state = {**STATE, "history": np.full((round_num, 4), round_num, dtype=np.float64)}
        checkpoints.save(state, round_num)
    loaded = checkpoints.load(STATE)
    assert loaded["history"].shape == (3, 4) and np.all(loaded["history"] == 3)
    np.testing.assert_array_equal(loaded["learning"][0], STATE["learning"][0])
    assert loaded["learning"][0].dtype == np.float32 and np.isinf(loaded["best"][0])
    assert sorted(p.name for p in tmp_path.glob("program_state_*")) == ["program_state_2.npz", "program_state_3.npz"]


def test_a_checkpoint_of_another_spec_is_refused(tmp_path):
    Checkpoints(tmp_path, {"spec": 1}).save(STATE, 1)
    with pytest.raises(ValueError, match="belong to a different training spec or data"):
        Checkpoints(tmp_path, {"spec": 2})


def test_a_write_cut_off_midway_leaves_the_previous_version_to_resume_from(tmp_path):
    manager = ArrayStateManager(tmp_path)
    asyncio.run(manager.save([np.ones(3)], 1))
    (tmp_path / "program_state_2.npz.partial").write_bytes(b"half a file")  # killed while writing round 2
    state, version = asyncio.run(manager.load_latest([np.zeros(3)]))
    assert version == 1 and np.all(state[0] == 1)
    with pytest.raises(tff.program.ProgramStateExistsError):
        asyncio.run(manager.save([np.ones(3)], 1))
