"""fed_models.fedprox: the proximal local solver against a hand computation, and TFF's own for contrast."""

import numpy as np
import tensorflow_federated as tff
from tensorflow_federated.python.learning.templates import proximal_client_work

from fed_models import runtime
from fed_models.client_data import client_dataset
from fed_models.training import ClientData, TrainingSpec, _model_fn, train

MEAN, STD = np.array([0.0, 0.0]), np.array([1.0, 1.0])


def _client():
    rng = np.random.default_rng(1)
    return ClientData("a", rng.normal(size=(4, 2)), np.array([1.0, 0.0, 1.0, 1.0]))


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _hand_local_steps(c, lr, mu, steps):
    """Full-batch SGD on mean cross-entropy + mu/2 ||w - 0||^2 from zero weights, bias last."""
    w = np.zeros(3)
    x = np.hstack([c.x, np.ones((len(c.y), 1))])
    for _ in range(steps):
        gradient = x.T @ (_sigmoid(x @ w) - c.y) / len(c.y)
        w = w - lr * (gradient + mu * w)
    return w


def test_two_local_steps_match_the_fedprox_objective():
    c = _client()
    spec = TrainingSpec(
        algorithm="fedprox",
        proximal_strength=2.0,
        rounds=1,
        local_epochs=2,
        batch_size=4,
        client_learning_rate=0.3,
        aggregation="plain",
    )
    kernel, bias = train([c], MEAN, STD, spec).weights
    np.testing.assert_allclose(np.concatenate([kernel.ravel(), bias]), _hand_local_steps(c, 0.3, 2.0, 2), atol=1e-6)


def test_tff_087_fedprox_client_work_pushes_away_from_the_global_model():
    """Why fed_models has its own proximal solver: TFF's adds mu * (w_global - w) to the gradient."""
    runtime.ensure_context()
    c = _client()
    spec = TrainingSpec(rounds=1, batch_size=4, client_learning_rate=0.3)
    work = proximal_client_work.build_model_delta_client_work(
        _model_fn(spec, MEAN, STD),
        tff.learning.optimizers.build_sgdm(0.3),
        tff.learning.ClientWeighting.NUM_EXAMPLES,
        delta_l2_regularizer=2.0,
        loop_implementation=tff.learning.LoopImplementation.DATASET_REDUCE,
    )
    weights = tff.learning.models.ModelWeights(
        trainable=[np.zeros((2, 1), np.float32), np.zeros(1, np.float32)], non_trainable=[]
    )
    output = work.next(work.initialize(), [weights], [client_dataset(c.x, c.y, batch_size=4, epochs=2, seed=0)])
    update = np.concatenate([np.ravel(u) for u in output.result[0].update])
    # model_delta updates are w_global - w_local.
    np.testing.assert_allclose(-update, _hand_local_steps(c, 0.3, -2.0, 2), atol=1e-6)
