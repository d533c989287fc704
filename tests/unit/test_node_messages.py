"""node.messages: one typed request per operation, the one table both sides use; a request is checked field by
field before a node's service sees it."""

import numpy as np
import pytest

from node import wire
from node.messages import OPERATIONS, SECURE_INPUTS, SchemaRef, SecureBegin, SplitRef, TrainRound, parse
from node.service import NodeService


def test_every_operation_has_a_service_method_and_a_deadline():
    assert set(OPERATIONS) == {
        "Describe",
        "Validate",
        "Statistics",
        "Prepare",
        "TrainRound",
        "ValidateRound",
        "Evaluate",
        "Monitor",
        "TrainTrees",
        "TreeProgress",
        "SecureBegin",
        "SecureShare",
        "SecureMask",
        "SecureConsistency",
        "SecureUnmask",
    }
    for name, request in OPERATIONS.items():
        assert callable(getattr(NodeService, request.method())), name
        assert request.timeout > 0, name
    assert TrainRound.method() == "train_round" and SecureBegin.method() == "secure_begin"


def test_a_request_crosses_the_wire_and_comes_back_the_same():
    weights = {"trainable": [np.arange(6, dtype=np.float32).reshape(2, 3)], "non_trainable": []}
    sent = TrainRound("run-1", 3, weights, 17)
    received = parse("TrainRound", wire.decode(wire.encode(sent.plain())))
    assert (received.run_key, received.round, received.client_seed) == ("run-1", 3, 17)
    np.testing.assert_array_equal(received.weights["trainable"][0], weights["trainable"][0])
    assert SplitRef(0.2, 0.1, 7).split().seed == 7
    assert SchemaRef.of(type("S", (), {"name": "credit", "version": 2})()).version == 2


@pytest.mark.parametrize(
    ("operation", "plain", "said"),
    [
        ("TrainRound", {"run_key": "r", "round": 1, "weights": {}}, "field 'client_seed': Field required"),
        ("TreeProgress", {"run_key": ["secret-value"]}, "field 'run_key': Input should be a valid string"),
        ("Describe", {"code": "import os"}, "field 'code': Unexpected keyword argument"),
        ("Statistics", [1, 2], "a request is an object of fields, not a list"),
        ("RunThis", {}, "no operation 'RunThis'"),
    ],
)
def test_a_malformed_request_is_refused_naming_the_field_not_the_value(operation, plain, said):
    with pytest.raises(wire.WireError) as refused:
        parse(operation, plain)
    assert said in str(refused.value)
    assert "secret-value" not in str(refused.value) and "import os" not in str(refused.value)


def test_a_secure_sum_adds_only_what_a_node_computes():
    begin = SecureBegin("s", ["a", "b", "c"], 3, {"run_key": "r"}, "train_round")
    with pytest.raises(wire.WireError, match="TrainRound: field 'round': Field required"):
        begin.inner()
    with pytest.raises(wire.WireError, match="no secure sum adds 'evaluate'"):
        SecureBegin("s", ["a", "b", "c"], 3, {}, "evaluate").inner()
    assert set(SECURE_INPUTS) == {
        "train_round",
        "buffered_round",
        "validate_round",
        "statistics",
        "monitor",
        "development_counts",
        "fairness_counts",
    }
    # A node's development counts and counts by protected group are added to a secure sum only: no operation
    # answers them plainly (in the clear they come with Evaluate, when the run has no secure aggregation).
    assert "DevelopmentCounts" not in OPERATIONS and "GroupCountsSum" not in OPERATIONS
    with pytest.raises(wire.WireError, match="DevelopmentCounts: field 'model': Field required"):
        SecureBegin("s", ["a", "b", "c"], 3, {"run_key": "r"}, "development_counts").inner()
