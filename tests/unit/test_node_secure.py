"""node.secure: a run's encoding, what a node puts into a round's secure sum, and what the coordinator accepts
back. A node weighs its update by its own examples over the run's bound (never a coordinator-chosen total), and
the coordinator refuses a sum that honest nodes could not have added up to (one bank scaling the consortium's
update)."""

from __future__ import annotations

import numpy as np
import pytest

from node.secure import Encoding, decode_round, input_digest, round_inputs
from secagg.protocol import RULE_ENCODING, SecureAggregationError

ENCODING = Encoding(clip_norm=10.0, institutions=3, weight_bound=1000.0)
METRICS = {"loss": np.array([2.0]), "count": np.array([10], dtype=np.int64)}


def _inputs(update, weight):
    values, meta = round_inputs([np.asarray(update, dtype=np.float32)], weight, METRICS, ENCODING)
    return values, meta


def test_a_node_clips_its_update_and_weighs_it_by_its_own_examples_over_the_runs_bound():
    values, meta = _inputs([30.0, 40.0], 500.0)  # norm 50: clipped to 10
    share, non_finite, clipped, norm = values["sums"][:4]
    assert (share, non_finite, clipped, norm) == (0.5, 0.0, 1.0, 50.0)
    np.testing.assert_allclose(values["update"], [3.0, 4.0])  # (6, 8) clipped, times its share 0.5
    assert meta["shapes"] == [[2]]
    with pytest.raises(
        SecureAggregationError,
        match=rf"weighs 1500 examples, more than the run's weight bound 1000 "
        rf"\(rule: {RULE_ENCODING}\)",
    ):
        _inputs([1.0, 1.0], 1500.0)


def test_the_sum_of_honest_rounds_decodes_to_the_weighted_mean():
    rounds = [_inputs([1.0, 2.0], 600.0), _inputs([3.0, -1.0], 300.0), _inputs([0.0, 0.5], 100.0)]
    sums = {name: np.sum([values[name] for values, _ in rounds], axis=0) for name in ("update", "sums")}
    summed = decode_round(sums, rounds[0][1], 3, ENCODING)
    np.testing.assert_allclose(
        summed.update[0],
        (600 * np.array([1, 2]) + 300 * np.array([3, -1]) + 100 * np.array([0, 0.5])) / 1000,
        rtol=1e-6,
    )
    assert summed.weight == pytest.approx(1.0) and summed.institutions == 3
    assert summed.metrics["count"].tolist() == [30]


@pytest.mark.parametrize(
    "forged_share, refusal",
    [
        (1e6, r"summed weight is 1e\+06, outside \[0, 3\]"),  # one bank claims to weigh a million institutions
        (-0.899, r"weighted update sum has norm .* more than its summed weight 0.001"),  # it cancels the others' weight
    ],
)
def test_the_coordinator_refuses_a_sum_that_honest_nodes_could_not_add_up_to(forged_share, refusal):
    """A malicious bank sends whatever it likes in its masked slots: its weight slot set so that dividing by the
    summed weight would blow the consortium update up; the coordinator refuses the round."""
    honest = [_inputs([1.0, 2.0], 600.0), _inputs([3.0, -1.0], 300.0)]  # shares 0.6 and 0.3
    forged, meta = _inputs([0.0, 0.0], 100.0)
    forged["sums"][0] = forged_share
    sums = {
        name: np.sum([values[name] for values, _ in honest] + [forged[name]], axis=0) for name in ("update", "sums")
    }
    with pytest.raises(SecureAggregationError, match=refusal):
        decode_round(sums, meta, 3, ENCODING)


@pytest.mark.parametrize(
    "plain, problem",
    [
        ({"clip_norm": 0, "institutions": 3, "weight_bound": 10}, "clip norm 0"),
        ({"clip_norm": float("inf"), "institutions": 3, "weight_bound": 10}, "clip norm inf"),
        ({"clip_norm": 1, "institutions": 2, "weight_bound": 10}, "2 institutions"),
        ({"clip_norm": 1, "institutions": 3, "weight_bound": 0.5}, "weight bound 0.5"),
        ({"clip_norm": 1, "institutions": 3}, "malformed"),
    ],
)
def test_a_runs_encoding_is_checked_where_it_arrives(plain, problem):
    with pytest.raises(SecureAggregationError, match=problem) as refused:
        Encoding.from_dict(plain)
    assert refused.value.rule == RULE_ENCODING


def test_an_input_is_known_by_its_operation_and_exact_values():
    update = {"update": np.array([0.1, 0.2]), "sums": np.array([1.0])}
    assert input_digest("train_round", update) == input_digest("train_round", {k: v.copy() for k, v in update.items()})
    assert input_digest("train_round", update) != input_digest("validate_round", update)
    assert input_digest("train_round", update) != input_digest(
        "train_round", {**update, "sums": np.array([1.0 + 1e-12])}
    )
