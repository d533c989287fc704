"""FedProx's local solver: SGD on the local loss plus mu/2 * ||w - w_global||^2.

TFF 0.87's FedProx client work adds mu * (w_global - w) to the gradient, the negative of the
proximal term's gradient, which pushes local models away from the global one and diverges
for strong mu (tests/unit/test_fedprox.py shows it). This optimizer adds mu * (w - w_global)
itself; the global model is the weights it first sees, since TFF initializes the client
optimizer afresh for every institution and round.
"""

from __future__ import annotations

import collections

import tensorflow as tf
import tensorflow_federated as tff

_LEARNING_RATE, _STRENGTH, _ANCHOR, _ANCHORED = "learning_rate", "proximal_strength", "anchor", "anchored"


class ProximalSGD(tff.learning.optimizers.Optimizer):
    """Plain SGD with the FedProx proximal gradient toward the round's starting (global) weights."""

    def __init__(self, learning_rate: float, proximal_strength: float):
        if learning_rate <= 0 or proximal_strength < 0:
            raise ValueError("learning_rate must be > 0 and proximal_strength >= 0")
        self._lr = learning_rate
        self._mu = proximal_strength

    def initialize(self, specs):
        return collections.OrderedDict(
            [
                (_LEARNING_RATE, self._lr),
                (_STRENGTH, self._mu),
                (_ANCHOR, tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), specs)),
                (_ANCHORED, tf.constant(False)),
            ]
        )

    def next(self, state, weights, gradients):
        anchor = tf.cond(state[_ANCHORED], lambda: state[_ANCHOR], lambda: tf.nest.map_structure(tf.identity, weights))
        lr, mu = state[_LEARNING_RATE], state[_STRENGTH]

        def step(w, g, w0):
            return w - tf.cast(lr, w.dtype) * (g + tf.cast(mu, w.dtype) * (w - w0))

        updated = tf.nest.map_structure(step, weights, gradients, anchor)
        new_state = collections.OrderedDict(
            [
                (_LEARNING_RATE, lr),
                (_STRENGTH, mu),
                (_ANCHOR, anchor),
                (_ANCHORED, tf.constant(True)),
            ]
        )
        return new_state, updated

    def get_hparams(self, state):
        return collections.OrderedDict([(_LEARNING_RATE, state[_LEARNING_RATE]), (_STRENGTH, state[_STRENGTH])])

    def set_hparams(self, state, hparams):
        return collections.OrderedDict([(k, hparams.get(k, v)) for k, v in state.items()])
