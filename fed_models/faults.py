"""Simulated faulty institutions: a client whose sent update is multiplied by a factor.

For robustness tests and drills only: x100 (a scaling bug or attack), -1 (sign flip) or NaN
(a corrupted update). Each client's factor travels with its data as a one-element sequence,
because inside a TFF computation clients are anonymous.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

HONEST = 1.0


def faulty_client_data(batches: tf.data.Dataset, update_factor: float) -> collections.OrderedDict:
    """One client's input to a fault-injecting client work: its batches and its update factor."""
    factor = tf.data.Dataset.from_tensors(np.float32(update_factor))
    return collections.OrderedDict(batches=batches, update_factor=factor)


def with_update_faults(
    client_work: tff.learning.templates.ClientWorkProcess,
) -> tff.learning.templates.ClientWorkProcess:
    """Wrap `client_work` so each client's update is multiplied by its `update_factor`."""
    state_type, weights_type, data_type = client_work.next.type_signature.parameter
    batches_type = data_type.member
    input_type = tff.FederatedType(
        tff.StructWithPythonType(
            [("batches", batches_type), ("update_factor", tff.SequenceType(tff.TensorType(np.float32)))],
            collections.OrderedDict,
        ),
        tff.CLIENTS,
    )

    @tff.tensorflow.computation(input_type.member)
    def batches_of(data):
        return data["batches"]

    @tff.tensorflow.computation(input_type.member)
    def factor_of(data):
        return data["update_factor"].reduce(np.float32(0.0), lambda total, f: total + f)

    result_type = client_work.next.type_signature.result.result.member

    @tff.tensorflow.computation(result_type, np.float32)
    def apply_factor(result, factor):
        update = tf.nest.map_structure(lambda t: t * factor, result.update)
        return tff.learning.templates.ClientResult(update=update, update_weight=result.update_weight)

    @tff.federated_computation(state_type, weights_type, input_type)
    def next_fn(state, weights, data):
        output = client_work.next(state, weights, tff.federated_map(batches_of, data))
        faulty = tff.federated_map(apply_factor, (output.result, tff.federated_map(factor_of, data)))
        return tff.templates.MeasuredProcessOutput(output.state, faulty, output.measurements)

    return tff.learning.templates.ClientWorkProcess(client_work.initialize, next_fn)
