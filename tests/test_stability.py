"""The epsilon-stable detector on synthetic loss curves (ILA-METHOD, Stage 1)."""

import math
import random

import pytest

from ila.stability import StabilityDetector, detect_stable, relative_change

PARAMS = {"epsilon": 0.02, "window": 10, "patience": 5}


def noisy(values, noise, seed=0):
    rng = random.Random(seed)
    return [v + rng.gauss(0.0, noise) for v in values]


def test_relative_change_needs_two_windows():
    assert relative_change([1.0] * 19, 10) is None
    assert relative_change([2.0] * 10 + [1.0] * 10, 10) == pytest.approx(0.5)


def test_noisy_plateau_is_stable_soon_after_the_drop():
    # Exponential decay to a plateau at 1.0, with step-to-step noise of 1%.
    curve = noisy([1.0 + 3.0 * math.exp(-t / 8) for t in range(300)], 0.01)
    t = detect_stable(curve, **PARAMS)
    assert t is not None
    # Stable once the decay is spent (3e^{-t/8} per window < 2%), not at the first step
    # the windows exist and not only at the end.
    assert 50 <= t <= 120


def test_slow_steady_decline_is_never_stable():
    # Loss falls 0.5% per step: each window of 10 steps falls ~5% > epsilon.
    curve = [4.0 * (0.995**t) for t in range(400)]
    assert detect_stable(curve, **PARAMS) is None


def test_slow_decline_becomes_stable_with_a_looser_epsilon():
    curve = [4.0 * (0.995**t) for t in range(400)]
    assert detect_stable(curve, epsilon=0.08, window=10, patience=5) == 2 * 10 + 4


def test_spike_resets_the_streak():
    flat = noisy([1.0] * 200, 0.002)
    t_flat = detect_stable(flat, **PARAMS)
    spiked = list(flat)
    spiked[t_flat - 3] = 5.0  # a spike just before the flat curve would have been declared stable
    t_spiked = detect_stable(spiked, **PARAMS)
    assert t_spiked is not None and t_spiked > t_flat + PARAMS["window"]


def test_min_steps_delays_the_verdict():
    flat = [1.0] * 100
    assert detect_stable(flat, **PARAMS) == 2 * 10 + 4
    assert detect_stable(flat, **PARAMS, min_steps=50) == 54


def test_all_series_must_be_stable():
    loss = [1.0] * 100
    growing_update = [1.0 + 0.1 * t for t in range(100)]
    assert detect_stable({"loss": loss, "update_norm": growing_update}, **PARAMS) is None
    flat_update = [2.0] * 100
    assert detect_stable({"loss": loss, "update_norm": flat_update}, **PARAMS) == 24


def test_detector_stays_stable_and_rejects_nan():
    detector = StabilityDetector(**PARAMS)
    for _ in range(30):
        status = detector.update({"loss": 1.0})
    assert status.stable and status.stable_step == 24
    status = detector.update({"loss": 9.0})
    assert status.stable and status.stable_step == 24 and status.streak == 0
    with pytest.raises(ValueError, match="non-finite loss"):
        detector.update({"loss": float("nan")})


@pytest.mark.parametrize(
    "bad", [{"epsilon": 0.0}, {"epsilon": 1.5}, {"window": 0}, {"patience": 0}]
)
def test_detector_validates_parameters(bad):
    with pytest.raises(ValueError):
        StabilityDetector(**{**PARAMS, **bad})
