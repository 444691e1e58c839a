"""The metrics against the truth: sliced Wasserstein on cases with known answers, mode coverage of true samples."""

import math

import pytest
import torch

from diffusion.errors import UserError
from diffusion.testbed import (mean_log_density, mode_coverage, posterior_weights, random_directions, random_mixture,
                               sample, sliced_wasserstein, toy_mixture_2d)

TOY = toy_mixture_2d()
HIGH = random_mixture(dim=8, num_components=6, num_classes=3, seed=1)  # well separated components


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_sliced_wasserstein_known_answers():
    x = sample(HIGH, 3000, generator(1))
    v = torch.linspace(-1, 1, HIGH.dim, dtype=torch.float64)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, torch.cat([x, x])) == 0.0  # unequal sizes, same empirical measure
    # a translation by v moves every projection by u.v: SW_2 = sqrt(mean_u (u.v)^2) exactly, ~ |v| / sqrt(d)
    u = random_directions(HIGH.dim, 256, seed=0)
    exact = float(((v @ u) ** 2).mean().sqrt())
    assert sliced_wasserstein(x, x + v) == pytest.approx(exact, rel=1e-12)
    assert exact == pytest.approx(float(v.norm()) / math.sqrt(HIGH.dim), rel=0.15)
    y = sample(HIGH, 2000, generator(2))
    assert sliced_wasserstein(x, y) == pytest.approx(sliced_wasserstein(y, x), rel=1e-12)
    assert sliced_wasserstein(x, y, seed=1) != sliced_wasserstein(x, y, seed=0)
    with pytest.raises(UserError):
        sliced_wasserstein(x, y[:, :3])


@pytest.mark.parametrize("mixture", [TOY, HIGH], ids=["toy2d", "random8d"])
def test_mode_coverage_of_true_samples_matches_the_weights(mixture):
    """Mean responsibility per component is within 4 standard errors of pi_k (its exact expectation); the hard
    nearest-component share within 0.02 of pi_k; for separated components the share within 3 std is pi_k P(chi^2_d <= 9)."""
    x = sample(mixture, 20_000, generator(3))
    coverage = mode_coverage(mixture, x, k_std=3.0)
    standard_error = posterior_weights(mixture, x).std(0) / math.sqrt(len(x))
    assert bool(((coverage.responsibility - coverage.weights).abs() < 4 * standard_error).all())
    assert bool(((coverage.nearest - coverage.weights).abs() < 0.02).all())
    assert coverage.total_variation < 0.02 and coverage.missed() == []
    if mixture is HIGH:
        torch.testing.assert_close(coverage.within, coverage.expected_within, rtol=0, atol=0.01)


def test_mode_coverage_sees_a_collapse_and_log_density_sees_blur():
    collapsed = sample(TOY.class_mixture(0), 5000, generator(4))  # a sampler that never draws class 1
    coverage = mode_coverage(TOY, collapsed)
    class_1 = torch.nonzero(TOY.classes == 1)[:, 0].tolist()
    assert set(coverage.missed()) <= set(class_1) and len(coverage.missed()) >= len(class_1) - 1  # one touches class 0
    assert float(coverage.nearest[class_1].sum()) < 0.02
    assert coverage.total_variation == pytest.approx(float(TOY.weights[TOY.classes == 1].sum()), abs=0.02)
    true = sample(TOY, 5000, generator(5))
    blurred = sample(TOY, 5000, generator(5), sigma=0.1)  # samples off the ridges
    assert mean_log_density(TOY, blurred) < mean_log_density(TOY, true) - 0.5
