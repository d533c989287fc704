"""Privacy accounting: the epsilon of record-level DP-SGD and of client-level DP, with dp_accounting.

Record level (one customer added to or removed from one institution's rows): each local step of
DP-SGD samples the institution's rows independently with probability q = batch / n (Poisson),
clips each example's gradient to an L2 norm and adds Gaussian noise of stddev z * clip to their
sum. `steps` such steps over all rounds compose; Renyi DP (RDP) accounting turns them into
(epsilon, delta). Client level (one institution added or removed): each round the institution
takes part in is a Gaussian mechanism on its clipped update (no amplification by sampling is
claimed: which institutions train in a round is not secret).

Only numbers here (no TensorFlow), so the flow can plan a run's budget before training starts.
"""

from __future__ import annotations

import math

import dp_accounting

_MAX_NOISE_MULTIPLIER = 1e4


def steps_per_round(rows: int, batch_size: int, local_epochs: int) -> int:
    """Local DP-SGD steps an institution takes per round: its epochs over `rows` at the expected batch size."""
    return max(1, round(local_epochs * rows / batch_size))


def sampling_probability(rows: int, batch_size: int) -> float:
    return min(1.0, batch_size / rows)


def _record_event(rows: int, batch_size: int, steps: int, noise_multiplier: float) -> dp_accounting.DpEvent:
    step = dp_accounting.PoissonSampledDpEvent(
        sampling_probability(rows, batch_size), dp_accounting.GaussianDpEvent(noise_multiplier)
    )
    return dp_accounting.SelfComposedDpEvent(step, steps)


def _epsilon(event: dp_accounting.DpEvent, delta: float) -> float:
    return float(dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta))


def record_level_epsilon(*, rows: int, batch_size: int, steps: int, noise_multiplier: float, delta: float) -> float:
    """Epsilon of `steps` Poisson-sampled DP-SGD steps over `rows` customers (0 steps spend nothing)."""
    if steps == 0:
        return 0.0
    return _epsilon(_record_event(rows, batch_size, steps, noise_multiplier), delta)


def client_level_epsilon(*, rounds: int, noise_multiplier: float, delta: float) -> float:
    """Epsilon of an institution's update released in `rounds` rounds under the Gaussian mechanism."""
    if rounds == 0:
        return 0.0
    return _epsilon(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier), rounds), delta)


class EpsilonUnreachable(ValueError):
    """No noise multiplier reaches the target epsilon (it is too small for the steps taken)."""


def _calibrate(event_of, target_epsilon: float, delta: float, what: str) -> float:
    if _epsilon(event_of(_MAX_NOISE_MULTIPLIER), delta) > target_epsilon:
        raise EpsilonUnreachable(
            f"epsilon {target_epsilon:g} at delta {delta:.3g} cannot be reached for {what}, "
            f"even with noise multiplier {_MAX_NOISE_MULTIPLIER:g}"
        )
    return (
        float(
            dp_accounting.calibrate_dp_mechanism(
                dp_accounting.rdp.RdpAccountant,
                event_of,
                target_epsilon,
                delta,
                dp_accounting.LowerEndpointAndGuess(0.0, 1.0),
                tol=1e-4,
            )
        )
        + 1e-4
    )  # the upper side of the tolerance


def record_level_noise_multiplier(
    *, target_epsilon: float, rows: int, batch_size: int, steps: int, delta: float
) -> float:
    """The smallest noise multiplier (within 1e-4) whose `steps` DP-SGD steps spend at most `target_epsilon`."""
    return _calibrate(
        lambda z: _record_event(rows, batch_size, steps, z),
        target_epsilon,
        delta,
        f"{steps} steps over {rows} rows at batch {batch_size}",
    )


def client_level_noise_multiplier(*, target_epsilon: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier (within 1e-4) for which `rounds` client-level releases spend at most
    `target_epsilon`."""
    return _calibrate(
        lambda z: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds),
        target_epsilon,
        delta,
        f"{rounds} rounds",
    )


def default_delta(rows: int) -> float:
    """delta = 1/n: the chance of a catastrophic failure no larger than one customer's share."""
    return 1.0 / rows if rows > 0 else math.nan
