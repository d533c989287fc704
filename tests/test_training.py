"""fed_models.training: FedAvg against a hand computation, determinism, and learning."""

import numpy as np
from fed_models.training import ClientData, FedAvgSpec, train_fed_avg


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_one_round_equals_example_weighted_average_of_client_updates():
    rng = np.random.default_rng(0)
    clients = [
        ClientData("a", rng.normal(3, 2, size=(3, 2)), np.array([1.0, 0.0, 1.0])),
        ClientData("b", rng.normal(3, 2, size=(5, 2)), np.array([0.0, 0.0, 1.0, 1.0, 0.0])),
    ]
    mean, std = np.array([3.0, 2.5]), np.array([2.0, 1.5])
    spec = FedAvgSpec(rounds=1, local_epochs=1, batch_size=16, client_learning_rate=0.3,
                      server_learning_rate=1.0, seed=0)
    result = train_fed_avg(clients, mean, std, spec)

    # By hand: every client takes one full-batch SGD step from zero weights (p = 0.5),
    # and the server averages the resulting models weighted by example counts.
    updates, counts = [], []
    for c in clients:
        z = (c.x - mean) / std
        error = _sigmoid(np.zeros(len(c.y))) - c.y
        grad_w, grad_b = (error[:, None] * z).mean(axis=0), error.mean()
        updates.append(np.concatenate([-0.3 * grad_w, [-0.3 * grad_b]]))
        counts.append(len(c.y))
    expected = np.average(updates, axis=0, weights=counts)
    kernel, bias = result.weights
    np.testing.assert_allclose(np.concatenate([kernel.ravel(), bias]), expected, atol=1e-6)
    assert result.rounds[0].num_examples == 8


def _learnable_clients(seed=0):
    rng = np.random.default_rng(seed)
    clients = []
    for name, n in [("a", 600), ("b", 300), ("c", 150)]:
        x = rng.normal(size=(n, 3)) * [1, 10, 100] + [0, 50, 1000]
        z = 1.5 * x[:, 0] - 0.1 * (x[:, 1] - 50) + 0.01 * (x[:, 2] - 1000)
        clients.append(ClientData(name, x, (rng.random(n) < _sigmoid(z)).astype(float)))
    return clients


def test_training_learns_and_is_deterministic_by_seed():
    clients = _learnable_clients()
    mean, std = np.array([0.0, 50.0, 1000.0]), np.array([1.0, 10.0, 100.0])
    spec = FedAvgSpec(rounds=5, local_epochs=1, batch_size=32, client_learning_rate=0.1,
                      server_learning_rate=1.0, seed=42)
    seen = []
    first = train_fed_avg(clients, mean, std, spec, on_round=seen.append)
    second = train_fed_avg(clients, mean, std, spec)
    assert [m.round for m in seen] == [1, 2, 3, 4, 5]
    assert seen[-1].loss < seen[0].loss and seen[-1].auc > 0.8
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    kernel = first.weights[0].ravel()
    assert kernel[0] > 0 and kernel[1] < 0 and kernel[2] > 0  # the signs of the true coefficients
