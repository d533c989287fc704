"""fed_models.training: algorithms against hand computations, sampling, stopping, resume, determinism."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fed_models.aggregation import update_bytes
from fed_models.keras_models import ModelSpec, build_model, predict_proba
from fed_models.training import ALGORITHMS, ClientData, TrainingSpec, sample_clients, train

MEAN, STD = np.array([0.0, 50.0, 1000.0]), np.array([1.0, 10.0, 100.0])
MLP = ModelSpec("mlp", (8, 4), dropout=0.2, seed=1)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _rows(rng, n, positive_shift=0.0):
    x = rng.normal(size=(n, 3)) * [1, 10, 100] + [0, 50, 1000]
    z = 1.5 * x[:, 0] - 0.1 * (x[:, 1] - 50) + 0.01 * (x[:, 2] - 1000) + positive_shift
    return x, (rng.random(n) < _sigmoid(z)).astype(float)


def _institutions(sizes=(("a", 600), ("b", 300), ("c", 150)), seed=0, positive_shift=0.0):
    """Clients and their validation splits, with a known logistic relation between x and y."""
    rng = np.random.default_rng(seed)
    clients, validation = [], []
    for name, n in sizes:
        clients.append(ClientData(name, *_rows(rng, n, positive_shift)))
        validation.append(ClientData(name, *_rows(rng, max(n // 5, 50), positive_shift)))
    return clients, validation


def _holdout_auc(spec, weights, seed=99):
    x, y = _rows(np.random.default_rng(seed), 3000)
    model = build_model(spec.model, MEAN, STD)
    model.set_weights(weights)
    p = predict_proba(model, x)
    return roc_auc_score(y, p) if np.all(np.isfinite(p)) else 0.5


def _flat(weights):
    return np.concatenate([np.ravel(w) for w in weights])


def _one_step_clients():
    rng = np.random.default_rng(0)
    return (
        [
            ClientData("a", rng.normal(3, 2, size=(3, 2)), np.array([1.0, 0.0, 1.0])),
            ClientData("b", rng.normal(3, 2, size=(5, 2)), np.array([0.0, 0.0, 1.0, 1.0, 0.0])),
        ],
        np.array([3.0, 2.5]),
        np.array([2.0, 1.5]),
    )


def _hand_fedavg_update(clients, mean, std, lr):
    # Every client takes one full-batch SGD step from zero weights (p = 0.5); the server
    # averages the resulting updates weighted by example counts.
    updates, counts = [], []
    for c in clients:
        z = (c.x - mean) / std
        error = 0.5 - c.y
        updates.append(np.concatenate([-lr * (error[:, None] * z).mean(axis=0), [-lr * error.mean()]]))
        counts.append(len(c.y))
    return np.average(updates, axis=0, weights=counts)


def test_fedavg_round_equals_example_weighted_average_of_client_updates():
    clients, mean, std = _one_step_clients()
    spec = TrainingSpec(rounds=1, batch_size=16, client_learning_rate=0.3, aggregation="plain")
    result = train(clients, mean, std, spec)
    np.testing.assert_allclose(_flat(result.weights), _hand_fedavg_update(clients, mean, std, 0.3), atol=1e-6)
    assert result.rounds[0].num_examples == 8 and result.rounds[0].institutions == 2


def test_fedadam_first_server_step_has_the_learning_rate_as_size_and_the_update_sign():
    # TFF Adam's first bias-corrected step is lr * g / (|g| + eps / sqrt(1 - beta_2)), beta_2 = 0.99:
    # about lr in size whatever the update's scale.
    clients, mean, std = _one_step_clients()
    spec = TrainingSpec(
        algorithm="fedadam",
        rounds=1,
        batch_size=16,
        client_learning_rate=0.3,
        server_learning_rate=0.01,
        aggregation="plain",
    )
    step = _flat(train(clients, mean, std, spec).weights)
    averaged = _hand_fedavg_update(clients, mean, std, 0.3)
    np.testing.assert_array_equal(np.sign(step), np.sign(averaged))
    np.testing.assert_allclose(np.abs(step), 0.01 * np.abs(averaged) / (np.abs(averaged) + 1e-3 / 0.1), rtol=1e-4)


def test_fedprox_keeps_local_models_closer_to_the_global_model():
    clients, validation = _institutions()
    common = dict(rounds=1, local_epochs=5, batch_size=16, client_learning_rate=0.1, aggregation="plain")
    fedavg = train(clients, MEAN, STD, TrainingSpec(**common))
    fedprox = train(clients, MEAN, STD, TrainingSpec(algorithm="fedprox", proximal_strength=5.0, **common))
    assert np.linalg.norm(_flat(fedprox.weights)) < 0.8 * np.linalg.norm(_flat(fedavg.weights))
    with pytest.raises(ValueError, match="proximal_strength"):
        train(clients, MEAN, STD, TrainingSpec(algorithm="fedprox", rounds=1))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_learns_an_mlp_and_is_deterministic_by_seed(algorithm):
    clients, validation = _institutions()
    spec = TrainingSpec(
        model=MLP,
        algorithm=algorithm,
        rounds=6,
        batch_size=32,
        client_learning_rate=0.1,
        server_learning_rate={"fedadam": 0.1, "fedyogi": 0.1, "fedadagrad": 0.3}.get(algorithm, 1.0),
        proximal_strength=0.01 if algorithm == "fedprox" else 0.0,
        seed=7,
    )
    seen = []
    first = train(clients, MEAN, STD, spec, validation=validation, on_round=seen.append)
    second = train(clients, MEAN, STD, spec, validation=validation)
    assert [m.round for m in seen] == list(range(1, 7))
    assert seen[-1].validation_loss < seen[0].validation_loss
    assert _holdout_auc(spec, first.weights) > 0.8  # the true (logistic) relation scores about 0.87
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_client_sampling_is_seeded_k_of_n():
    rounds = [sample_clients(10, 3, seed=5, round_num=r) for r in range(1, 21)]
    assert all(len(r) == 3 and len(set(r)) == 3 and max(r) < 10 for r in rounds)
    assert rounds == [sample_clients(10, 3, seed=5, round_num=r) for r in range(1, 21)]
    assert len({tuple(r) for r in rounds}) > 10
    assert sample_clients(4, None, seed=5, round_num=1) == [0, 1, 2, 3]

    clients, _ = _institutions()
    spec = TrainingSpec(rounds=4, clients_per_round=2, seed=5)
    result = train(clients, MEAN, STD, spec)
    sizes = [len(c.y) for c in clients]
    for m in result.rounds:
        chosen = sample_clients(3, 2, seed=5, round_num=m.round)
        assert m.institutions == 2 and m.num_examples == sum(sizes[i] for i in chosen)


def test_positive_class_weight_moves_predictions_toward_rare_positives():
    clients, validation = _institutions(positive_shift=-4.0)  # about 5% positives
    rate = np.mean(np.concatenate([c.y for c in clients]))
    assert rate < 0.1
    plain = TrainingSpec(rounds=30, client_learning_rate=0.1, seed=1)
    weighted = TrainingSpec(rounds=30, client_learning_rate=0.1, seed=1, positive_weight=(1 - rate) / rate)
    x = np.concatenate([c.x for c in validation])
    y = np.concatenate([c.y for c in validation])

    def probabilities(spec):
        weights = train(clients, MEAN, STD, spec).weights  # before building: TFF traces Keras in graphs
        model = build_model(spec.model, MEAN, STD)
        model.set_weights(weights)
        return predict_proba(model, x)

    p_plain, p_weighted = probabilities(plain), probabilities(weighted)
    recall_plain, recall_weighted = (np.mean(p[y == 1] >= 0.5) for p in (p_plain, p_weighted))
    print(
        f"mean probability {p_plain.mean():.3f} -> {p_weighted.mean():.3f}; "
        f"recall at 0.5 {recall_plain:.3f} -> {recall_weighted:.3f}"
    )
    assert p_plain.mean() < 0.15 < 0.3 < p_weighted.mean()
    assert recall_weighted > 0.8 > 0.5 > recall_plain


def test_early_stopping_exports_the_best_rounds_weights():
    clients, validation = _institutions()
    # No round after the first improves validation loss by 10, so patience 2 stops after round 3.
    spec = TrainingSpec(rounds=20, client_learning_rate=0.1, patience=2, min_delta=10.0, seed=3)
    result = train(clients, MEAN, STD, spec, validation=validation)
    assert [m.round for m in result.rounds] == [1, 2, 3]
    assert result.stopped_early and result.best_round == 1
    one_round = train(clients, MEAN, STD, TrainingSpec(rounds=1, client_learning_rate=0.1, seed=3))
    np.testing.assert_array_equal(_flat(result.weights), _flat(one_round.weights))

    patient = train(clients, MEAN, STD, TrainingSpec(rounds=6, client_learning_rate=0.1, seed=3), validation=validation)
    losses = [m.validation_loss for m in patient.rounds]
    assert not patient.stopped_early and patient.best_round == int(np.argmin(losses)) + 1


FAULTS = {"scaled x100": 100.0, "sign-flipped": -1.0, "sign-flipped x10": -10.0, "NaN": float("nan")}


def test_robust_aggregation_survives_one_faulty_institution_where_plain_averaging_does_not():
    clients, _ = _institutions(sizes=(("a", 600), ("b", 400), ("c", 300), ("d", 200)))
    figures = {}
    for aggregation in ("robust", "plain"):
        spec = TrainingSpec(rounds=15, client_learning_rate=0.1, aggregation=aggregation, seed=3)
        figures[aggregation, "clean"] = _holdout_auc(spec, train(clients, MEAN, STD, spec).weights)
        for fault, factor in FAULTS.items():
            result = train(clients, MEAN, STD, spec, update_factors={"b": factor})
            figures[aggregation, fault] = _holdout_auc(spec, result.weights)
            if aggregation == "robust" and fault == "NaN":
                assert all(m.non_finite_updates == 1 for m in result.rounds)
    print("\n".join(f"{a:>6} {f:>12}: holdout AUC {auc:.4f}" for (a, f), auc in figures.items()))
    for fault in FAULTS:
        assert abs(figures["robust", fault] - figures["robust", "clean"]) <= 0.01, fault
    assert figures["plain", "scaled x100"] < figures["plain", "clean"] - 0.02
    assert figures["plain", "sign-flipped x10"] < 0.5  # the model learns the wrong direction
    assert figures["plain", "NaN"] == 0.5  # TFF's server rejects each NaN average: the model never moves
    # A sign flip of ordinary size from a minority member only slows plain averaging down (both
    # stay within 0.01); norm-based defences cannot tell it from an honest update.
    assert abs(figures["plain", "sign-flipped"] - figures["plain", "clean"]) <= 0.01


def test_compression_cuts_bytes_and_keeps_the_model():
    clients, validation = _institutions()
    results = {}
    for aggregation in ("robust", "compression"):
        spec = TrainingSpec(model=MLP, rounds=5, client_learning_rate=0.1, aggregation=aggregation, seed=2)
        results[aggregation] = (spec, train(clients, MEAN, STD, spec, validation=validation))
    parameters = 3 * 8 + 8 + 8 * 4 + 4 + 4 + 1
    robust_bytes = results["robust"][1].rounds[0].bytes_sent
    compressed_bytes = results["compression"][1].rounds[0].bytes_sent
    assert robust_bytes == 3 * (4 * parameters + 4)  # three institutions send float32 updates and a weight
    assert compressed_bytes < 0.5 * robust_bytes  # tiny tensors: each carries its range and word padding
    credit_mlp = [(23, 32), (32,), (32, 16), (16,), (16, 1), (1,)]
    assert update_bytes("compression", credit_mlp) < 0.3 * update_bytes("robust", credit_mlp)
    auc = {k: _holdout_auc(spec, r.weights) for k, (spec, r) in results.items()}
    assert abs(auc["compression"] - auc["robust"]) < 0.01
    again = train(clients, MEAN, STD, results["compression"][0], validation=validation)
    np.testing.assert_array_equal(_flat(again.weights), _flat(results["compression"][1].weights))


class _Interrupted(Exception):
    pass


def test_checkpoints_resume_where_an_interrupted_run_stopped(tmp_path):
    clients, validation = _institutions()
    spec = TrainingSpec(
        model=MLP, algorithm="fedadam", rounds=6, server_learning_rate=0.05, seed=3, clients_per_round=2
    )
    uninterrupted = train(clients, MEAN, STD, spec, validation=validation, checkpoint_dir=tmp_path / "a")

    def interrupt_after_round_3(m):
        if m.round == 3:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train(
            clients,
            MEAN,
            STD,
            spec,
            validation=validation,
            checkpoint_dir=tmp_path / "b",
            on_round=interrupt_after_round_3,
        )
    seen = []
    resumed = train(
        clients, MEAN, STD, spec, validation=validation, checkpoint_dir=tmp_path / "b", on_round=seen.append
    )
    assert resumed.resumed_from_round == 3 and [m.round for m in seen] == [1, 2, 3, 4, 5, 6]
    # Exact: the server and optimizer state, the adaptive clipping norms and the best weights
    # are restored bit for bit, and each round's sample and shuffles derive from (seed, round).
    np.testing.assert_array_equal(_flat(resumed.weights), _flat(uninterrupted.weights))
    assert resumed.rounds == uninterrupted.rounds

    with pytest.raises(ValueError, match="different training spec"):
        train(clients, MEAN, STD, TrainingSpec(rounds=6, seed=4), validation=validation, checkpoint_dir=tmp_path / "b")


def test_client_level_dp_averages_clipped_updates_unweighted_and_measures_no_raw_norms():
    from fed_models.training import ClientLevelPrivacy

    clients, mean, std = _one_step_clients()
    clip = 0.05
    noiseless = TrainingSpec(
        rounds=1,
        batch_size=16,
        client_learning_rate=0.3,
        privacy=ClientLevelPrivacy(clip_norm=clip, noise_multiplier=0.0),
    )
    result = train(clients, mean, std, noiseless)
    expected = []
    for c in clients:  # each institution's own update, clipped, then the plain mean over institutions
        update = _hand_fedavg_update([c], mean, std, 0.3)
        expected.append(update * min(1.0, clip / np.linalg.norm(update)))
    np.testing.assert_allclose(_flat(result.weights), np.mean(expected, axis=0), atol=1e-6)
    first = result.rounds[0]
    assert all(np.isnan(v) for v in (first.client_update_norm, first.server_update_norm, first.loss, first.auc))

    noisy = train(
        clients,
        mean,
        std,
        TrainingSpec(
            rounds=1,
            batch_size=16,
            client_learning_rate=0.3,
            privacy=ClientLevelPrivacy(clip_norm=clip, noise_multiplier=2.0),
        ),
    )
    assert np.linalg.norm(_flat(noisy.weights) - _flat(result.weights)) > clip / 10  # noise of stddev 2 * clip / 2


def test_client_level_dp_with_adaptive_clipping_runs_with_three_institutions():
    # tff.learning.dp_aggregator's defaults refuse a handful of clients; ours budgets the clip estimate.
    from fed_models.training import ClientLevelPrivacy

    clients, validation = _institutions()
    spec = TrainingSpec(
        rounds=3,
        batch_size=32,
        client_learning_rate=0.1,
        privacy=ClientLevelPrivacy(clip_norm=0.1, noise_multiplier=0.5, adaptive_clipping=True),
    )
    result = train(clients, MEAN, STD, spec, validation=validation)
    assert len(result.rounds) == 3 and np.all(np.isfinite(_flat(result.weights)))
    assert result.rounds_trained == {"a": 3, "b": 3, "c": 3}


def test_record_level_dp_reports_no_training_set_metrics_and_counts_rounds_per_institution():
    from fed_models.training import RecordLevelPrivacy

    clients, validation = _institutions()
    spec = TrainingSpec(
        rounds=4,
        batch_size=32,
        client_learning_rate=0.5,
        clients_per_round=2,
        seed=3,
        privacy=RecordLevelPrivacy(1.0, {"a": 0.8, "b": 0.8, "c": 0.8}),
    )
    result = train(clients, MEAN, STD, spec, validation=validation)
    assert all(np.isnan(r.loss) and np.isnan(r.auc) and np.isfinite(r.validation_loss) for r in result.rounds)
    chosen = [sample_clients(3, 2, 3, r) for r in range(1, 5)]
    assert result.rounds_trained == {name: sum(i in c for c in chosen) for i, name in enumerate("abc")}
    assert _holdout_auc(spec, result.weights) > 0.7  # the signal is strong: DP-SGD still learns it
    with pytest.raises(ValueError, match="no noise multiplier for \\['c'\\]"):
        train(clients, MEAN, STD, TrainingSpec(rounds=1, privacy=RecordLevelPrivacy(1.0, {"a": 1.0, "b": 1.0})))


class _SlowInstitution:
    """Simulation with one institution whose client work takes two rounds, as at a node behind a deadline: started
    in odd rounds from the model it is given, its update arrives in the next round (it misses both)."""

    def __init__(self, clients, validation, slow: str):
        from fed_models.training import LocalInstitutions

        self.local = LocalInstitutions(clients, validation)
        self.names, self.fit_rows, self.lost, self.charged = (
            self.local.names,
            self.local.fit_rows,
            self.local.lost,
            self.local.charged,
        )
        self.slow, self.pending, self.missed, self.dropped = self.names.index(slow), None, [], []

    def prepare(self, stages):
        self.local.prepare(stages)

    def train_round(self, stages, round_num, weights, chosen):
        from dataclasses import replace

        from fed_models.training import client_round, client_seed

        updates = self.local.train_round(stages, round_num, weights, [i for i in chosen if i != self.slow])
        self.missed = [self.names[self.slow]]
        if self.pending is not None:
            updates.append(self.pending)
            self.pending = None
        elif round_num % 2 == 1:
            seed = client_seed(stages.spec.seed, round_num, self.slow)
            update = client_round(stages, self.local.clients[self.slow], weights, seed=seed)
            self.pending = replace(update, started_from=round_num - 1)
        return updates

    def validate(self, stages, round_num, weights):
        return self.local.validate(stages, round_num, weights)

    def last_validations(self):
        return []

    def trained_rounds(self, rounds_run):
        return self.local.trained_rounds(rounds_run)

    def finish(self):
        pass


def _late_spec(late_updates: str, rounds: int = 2):
    from fed_models.training import Schedule

    schedule = Schedule("deadline", deadline_seconds=1.0, late_updates=late_updates, staleness_exponent=1.0)
    return TrainingSpec(rounds=rounds, batch_size=32, aggregation="plain", seed=2, schedule=schedule)


@pytest.mark.parametrize("late_updates", ["discount", "drop"])
def test_a_late_update_is_applied_at_its_staleness_discount_or_dropped_as_configured(late_updates):
    """Round 1: a and b on time, c misses the deadline. Round 2: a and b on time from round 1's model, c's update
    from the initial model arrives one version late: weighted at 1/(1+1)^1 of its rows, or left out."""
    from fed_models.training import build_stages, client_round, client_seed

    clients, validation = _institutions()
    spec = _late_spec(late_updates)
    result = train(_SlowInstitution(clients, validation, "c"), MEAN, STD, spec)

    stages = build_stages(spec, MEAN, STD, 3)
    w0 = [np.asarray(w) for w in stages.initial_weights.trainable]

    def update(i, weights, round_num):
        from fed_models.training import weights_from_lists

        model = weights_from_lists({"trainable": weights, "non_trainable": []})
        seed = client_seed(spec.seed, round_num, i)
        return client_round(stages, clients[i], model, seed=seed)

    def step(weights, parts):  # FedAvg, server rate 1: the weighted mean of the deltas (old - new) taken off
        total = sum(w for _, w in parts)
        return [x - sum(w * u.update[k] for u, w in parts) / total for k, x in enumerate(weights)]

    n = [len(c.y) for c in clients]
    w1 = step(w0, [(update(0, w0, 1), n[0]), (update(1, w0, 1), n[1])])
    late = [(update(2, w0, 1), n[2] * 0.5)] if late_updates == "discount" else []
    w2 = step(w1, [(update(0, w1, 2), n[0]), (update(1, w1, 2), n[1]), *late])
    np.testing.assert_allclose(_flat(result.weights), _flat(w2), atol=1e-5)

    first, second = result.rounds
    assert (first.institutions, first.missed_deadline, first.late_applied) == (2, 1, 0)
    applied = late_updates == "discount"
    assert (second.late_applied, second.late_dropped, second.staleness) == (
        int(applied),
        int(not applied),
        float(applied),
    )
    assert second.institutions == 2 + applied and second.num_examples == n[0] + n[1] + applied * n[2]
    # institution -> per round [on time, late applied, late dropped, missed]
    assert result.participation["a"] == [[1, 0, 0, 0], [1, 0, 0, 0]]
    assert result.participation["c"] == [[0, 0, 0, 1], [0, int(applied), int(not applied), 1]]


def test_an_update_older_than_max_staleness_is_dropped_and_the_discount_is_fedbuffs_polynomial():
    from fed_models.training import Schedule

    schedule = Schedule("buffered", staleness_exponent=0.5, max_staleness=2)
    assert [round(schedule.discount(s), 4) for s in (0, 1, 3)] == [1.0, 0.7071, 0.5]
    assert [schedule.applies(s) for s in (0, 2, 3)] == [True, True, False]
    assert not Schedule("deadline", deadline_seconds=1, late_updates="drop").applies(1)


def test_a_resumed_run_continues_the_same_schedule(tmp_path):
    """Interrupted between rounds with nothing in flight, the resumed run restores each institution's record of the
    rounds before and goes on as the uninterrupted run did; another schedule cannot resume these checkpoints."""
    clients, validation = _institutions()
    spec = _late_spec("discount", rounds=4)
    uninterrupted = train(_SlowInstitution(clients, validation, "c"), MEAN, STD, spec, checkpoint_dir=tmp_path / "a")

    def interrupt_after_round_2(m):
        if m.round == 2:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train(
            _SlowInstitution(clients, validation, "c"),
            MEAN,
            STD,
            spec,
            checkpoint_dir=tmp_path / "b",
            on_round=interrupt_after_round_2,
        )
    resumed = train(_SlowInstitution(clients, validation, "c"), MEAN, STD, spec, checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from_round == 2
    assert resumed.participation == uninterrupted.participation
    assert resumed.rounds == uninterrupted.rounds
    np.testing.assert_array_equal(_flat(resumed.weights), _flat(uninterrupted.weights))
    with pytest.raises(ValueError, match="different training spec"):
        train(
            _SlowInstitution(clients, validation, "c"), MEAN, STD, _late_spec("drop", 4), checkpoint_dir=tmp_path / "b"
        )
