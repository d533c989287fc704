"""How the server combines institutions' model updates: robust (default), plain mean, or compressed."""

from __future__ import annotations

import collections
from typing import Literal

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_model_optimization.python.core.internal import tensor_encoding as te

AggregationKind = Literal["robust", "plain", "compression", "tff_robust"]
ZEROING_MULTIPLE = 5.0
QUANTIZATION_BITS = 8
# TFF's compression_aggregator only quantizes tensors of more than 20,000 elements, which
# leaves credit models (a few hundred to a few thousand weights) uncompressed; we quantize
# every tensor of more than one element with the same 8-bit uniform quantizer. Rounding is to
# the nearest level (error at most half a step) rather than stochastic, so that the same seed
# gives the same weights.
QUANTIZE_ABOVE_ELEMENTS = 1
QUANTIZER_OPTIONS = {"stochastic": False}


class NonFiniteUpdateGuard(tff.aggregators.WeightedAggregationFactory):
    """Drops (zero value, zero weight) an update with a NaN or infinite entry before aggregating.

    TFF's zeroing compares the update norm with a threshold, and a NaN norm compares false, so
    one institution sending NaN would otherwise poison the global model.
    """

    def __init__(self, inner: tff.aggregators.WeightedAggregationFactory):
        self._inner = inner

    def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
        inner = self._inner.create(value_type, weight_type)

        @tff.tensorflow.computation(value_type, weight_type)
        def guard(value, weight):
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tf.nest.flatten(value)])
            value = tf.nest.map_structure(lambda t: tf.where(finite, t, tf.zeros_like(t)), value)
            weight = tf.where(finite, weight, tf.zeros_like(weight))
            return value, weight, tf.cast(tf.logical_not(finite), tf.int32)

        @tff.federated_computation(
            inner.initialize.type_signature.result,
            tff.FederatedType(value_type, tff.CLIENTS),
            tff.FederatedType(weight_type, tff.CLIENTS),
        )
        def next_fn(state, value, weight):
            guarded_value, guarded_weight, rejected = tff.federated_map(guard, (value, weight))
            output = inner.next(state, guarded_value, guarded_weight)
            measurements = tff.federated_zip(
                collections.OrderedDict(non_finite_count=tff.federated_sum(rejected), inner=output.measurements)
            )
            return tff.templates.MeasuredProcessOutput(output.state, output.result, measurements)

        return tff.templates.AggregationProcess(inner.initialize, next_fn)


# TFF's robust_aggregator clips at an adaptive 80th percentile of update norms and zeroes above
# twice an adaptive 98th percentile plus 1. Those quantiles suit thousands of devices; among three
# banks the 98th percentile *is* the largest update, so a bank that keeps sending x100 updates
# raises both norms until it passes (benchmarks/faulty_institution_uci.py: -0.021 AUC). Here both
# norms track the median institution, which a single faulty member cannot move.
def _median_clipping(inner):
    norm = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
        initial_estimate=1.0, target_quantile=0.5, learning_rate=0.2
    )
    return tff.aggregators.clipping_factory(norm, inner)


def _median_zeroing(inner):
    norm = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
        initial_estimate=1.0, target_quantile=0.5, learning_rate=0.5, multiplier=ZEROING_MULTIPLE
    )
    return tff.aggregators.zeroing_factory(norm, inner)


def build_aggregator(kind: AggregationKind) -> tff.aggregators.WeightedAggregationFactory:
    """The example-weighted mean of updates, with update-norm measurements.

    robust: drop non-finite updates; zero any update above 5x the (adaptive) median norm; clip the
      rest to the median norm. TFF's zeroing and clipping factories, median-anchored.
    compression: the same, with updates quantized to 8 bits per weight before summing.
    plain: the bare weighted mean (for comparison; one faulty institution can ruin it).
    tff_robust: `tff.learning.robust_aggregator` as shipped (for comparison).
    """
    if kind == "plain":
        return tff.learning.add_debug_measurements(tff.aggregators.MeanFactory())
    if kind == "tff_robust":
        return NonFiniteUpdateGuard(
            tff.learning.robust_aggregator(debug_measurements_fn=tff.learning.add_debug_measurements)
        )
    if kind == "robust":
        inner = tff.aggregators.MeanFactory()
    elif kind == "compression":
        inner = tff.aggregators.MeanFactory(
            tff.aggregators.EncodedSumFactory.quantize_above_threshold(
                quantization_bits=QUANTIZATION_BITS, threshold=QUANTIZE_ABOVE_ELEMENTS, **QUANTIZER_OPTIONS
            )
        )
    else:
        raise ValueError(f"unknown aggregation {kind!r}")
    return NonFiniteUpdateGuard(_median_zeroing(_median_clipping(tff.learning.add_debug_measurements(inner))))


def update_bytes(kind: AggregationKind, shapes: list[tuple[int, ...]]) -> int:
    """Bytes one institution sends per round: its encoded update tensors plus its weight.

    For compression this encodes a tensor of each shape with the aggregator's quantizer and
    counts the bytes of what comes out (bit-packed values and their range).
    """
    total = np.dtype(np.float32).itemsize  # the example-count weight
    for shape in shapes:
        elements = int(np.prod(shape, dtype=np.int64))
        if kind != "compression" or elements <= QUANTIZE_ABOVE_ELEMENTS:
            total += elements * np.dtype(np.float32).itemsize
            continue
        encoder = te.encoders.as_simple_encoder(
            te.encoders.uniform_quantization(QUANTIZATION_BITS, **QUANTIZER_OPTIONS), tf.TensorSpec(shape, tf.float32)
        )
        sample = tf.random.stateless_normal(shape, seed=(0, 0))
        encoded, _ = encoder.encode(sample, encoder.initial_state())
        total += sum(int(np.asarray(t).nbytes) for t in tf.nest.flatten(encoded))
    return total


def build_client_dp_aggregator(
    *, noise_multiplier: float, clients_per_round: int, clip_norm: float, adaptive: bool
) -> tff.aggregators.WeightedAggregationFactory:
    """Client-level DP: each institution's update clipped to `clip_norm` (fixed, or adaptively to the
    median norm starting there), Gaussian noise of stddev noise_multiplier * clip on the sum, divided
    by `clients_per_round`. Unweighted, as the guarantee needs: an institution's weight would be a
    second, unbounded channel. No measurements of the raw updates (norms, counts) are added: they
    are not noised. TFF's client work already sends a non-finite update as zeros.
    """
    if adaptive:
        # TFF defaults the clipped-count noise to 0.05 * clients, which for a handful of members is
        # below what any useful noise multiplier needs; this spends about a quarter of the RDP on it.
        dp = tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
            noise_multiplier,
            clients_per_round,
            initial_l2_norm_clip=clip_norm,
            clipped_count_stddev=max(0.05 * clients_per_round, noise_multiplier),
        )
    else:
        dp = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(noise_multiplier, clients_per_round, clip_norm)
    return tff.aggregators.as_weighted_aggregator(dp)
