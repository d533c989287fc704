"""Privacy accounting: the epsilon we report is the one dp_accounting (and TF Privacy) give."""

import dp_accounting
import pytest

from fed_models.accounting import (
    EpsilonUnreachable,
    client_level_epsilon,
    client_level_noise_multiplier,
    record_level_epsilon,
    record_level_noise_multiplier,
    steps_per_round,
)


@pytest.mark.parametrize(
    "rows, batch, noise, epochs, delta, published",
    [
        # TF Privacy's own reference values for DP-SGD (compute_dp_sgd_privacy_test.py, RDP accountant).
        (60_000, 150, 1.3, 15, 1e-5, 0.7242234026109595),
        (100_000, 100, 1.0, 30, 1e-7, 1.4154988495444845),
    ],
)
def test_record_level_epsilon_matches_tf_privacys_published_figures(rows, batch, noise, epochs, delta, published):
    steps = epochs * rows // batch
    assert record_level_epsilon(
        rows=rows, batch_size=batch, steps=steps, noise_multiplier=noise, delta=delta
    ) == pytest.approx(published, rel=1e-9)


def test_record_level_epsilon_is_dp_accountings_poisson_subsampled_gaussian():
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(64 / 7200, dp_accounting.GaussianDpEvent(1.1)), 3_000
    )
    expected = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1 / 7200)
    assert record_level_epsilon(rows=7200, batch_size=64, steps=3_000, noise_multiplier=1.1, delta=1 / 7200) == expected
    assert record_level_epsilon(rows=7200, batch_size=64, steps=0, noise_multiplier=1.1, delta=1e-4) == 0.0


def test_client_level_epsilon_composes_one_gaussian_release_per_round_trained():
    expected = (
        dp_accounting.rdp.RdpAccountant()
        .compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(5.0), 40))
        .get_epsilon(1e-5)
    )
    assert client_level_epsilon(rounds=40, noise_multiplier=5.0, delta=1e-5) == expected


def test_noise_is_calibrated_to_spend_no_more_than_the_target():
    for target in (1.0, 3.0, 8.0):
        noise = record_level_noise_multiplier(
            target_epsilon=target, rows=7200, batch_size=256, steps=28 * 30, delta=1 / 7200
        )
        spent = record_level_epsilon(rows=7200, batch_size=256, steps=28 * 30, noise_multiplier=noise, delta=1 / 7200)
        assert target * 0.995 < spent <= target
    noise = client_level_noise_multiplier(target_epsilon=3.0, rounds=50, delta=1e-5)
    assert 2.99 < client_level_epsilon(rounds=50, noise_multiplier=noise, delta=1e-5) <= 3.0
    with pytest.raises(EpsilonUnreachable, match="cannot be reached"):
        record_level_noise_multiplier(target_epsilon=1e-6, rows=100, batch_size=100, steps=10**6, delta=1e-9)


def test_steps_per_round_are_the_local_epochs_at_the_expected_batch():
    assert steps_per_round(7200, 256, 1) == 28 and steps_per_round(7200, 64, 2) == 225
    assert steps_per_round(10, 256, 1) == 1  # a tiny institution still takes a step
