"""node.wire: only plain values and numeric arrays cross between coordinator and node, never pickles."""

import numpy as np
import pytest

from node import wire


def test_arrays_and_plain_values_round_trip_exactly():
    message = {
        "weights": [np.arange(6, dtype=np.float32).reshape(2, 3), np.float32(0.5)],
        "round": 3,
        "name": "bank_a",
        "none": None,
        "flag": True,
        "nan": float("nan"),
        "nested": {"x": [1, 2.5]},
    }
    back = wire.decode(wire.encode(message))
    np.testing.assert_array_equal(back["weights"][0], message["weights"][0])
    assert back["weights"][0].dtype == np.float32 and back["weights"][0].shape == (2, 3)
    assert back["round"] == 3 and back["nested"] == {"x": [1, 2.5]} and np.isnan(back["nan"])
    assert back["weights"][1].shape == () and back["weights"][1].dtype == np.float32  # a scalar stays a scalar
    transposed = np.arange(6, dtype=np.float64).reshape(2, 3).T  # not C-contiguous
    np.testing.assert_array_equal(wire.decode(wire.encode(transposed)), transposed)


def test_anything_else_is_refused_both_ways():
    with pytest.raises(wire.WireError, match="cannot send a object"):
        wire.encode({"code": object()})
    with pytest.raises(wire.WireError, match="cannot send an array of dtype object"):
        wire.encode(np.array([object()]))
    forged = b'{"x": {"__array__": "AAAA", "dtype": "object", "shape": [1]}}'
    with pytest.raises(wire.WireError, match="refused an array of dtype 'object'"):
        wire.decode(forged)
    with pytest.raises(wire.WireError, match="not a fedrisk message"):
        wire.decode(b"\x80\x04\x95pickle")
