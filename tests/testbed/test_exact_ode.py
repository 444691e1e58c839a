"""The exact probability-flow ODE: against the closed-form flow of one Gaussian, and landing on the mixture from
N(0, sigma_max^2) where a denoiser with a wrong noise level does not; a plain Euler sampler run on the exact
network converges to its endpoints."""

import math

import pytest
import torch

from diffusion.objectives import EDMObjective
from diffusion.testbed import (GaussianMixture, denoiser, exact_network, exact_ode_solution, gaussian_flow,
                               mode_coverage, ode_endpoint_error, probability_flow_endpoint, random_mixture, sample,
                               sliced_wasserstein, toy_mixture_2d)

TOY = toy_mixture_2d()
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002
SWD_THRESHOLD = 0.04  # true-vs-true SWD at 2000 vs 20000 samples is ~0.01-0.02; a 20% noise-level error gives ~0.06


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_single_gaussian_flow_matches_its_closed_form():
    """x(sigma) = mu + (C + sigma^2 I)^(1/2) (C + sigma_max^2 I)^(-1/2) (x_T - mu), then D: within 1e-9."""
    covariance = torch.tensor([[0.3, 0.1, 0.0], [0.1, 0.05, 0.01], [0.0, 0.01, 0.2]], dtype=torch.float64)
    mean = torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64)
    one = GaussianMixture(torch.ones(1), mean[None], covariance[None])
    x_T = SIGMA_MAX * torch.randn(50, 3, generator=generator(1), dtype=torch.float64)
    expected = denoiser(one, gaussian_flow(mean, covariance, x_T, SIGMA_MAX, SIGMA_MIN), SIGMA_MIN)
    torch.testing.assert_close(exact_ode_solution(one, x_T, SIGMA_MAX, SIGMA_MIN), expected, rtol=0, atol=1e-9)


def test_exact_ode_lands_on_the_mixture_and_a_wrong_denoiser_does_not():
    x_T = SIGMA_MAX * torch.randn(2000, 2, generator=generator(2), dtype=torch.float64)
    reference = sample(TOY, 20_000, generator(3))
    landed = exact_ode_solution(TOY, x_T, SIGMA_MAX, SIGMA_MIN, rtol=1e-8, atol=1e-8)  # a distribution test: 1e-8 is ample
    assert sliced_wasserstein(landed, reference) < SWD_THRESHOLD
    assert mode_coverage(TOY, landed).total_variation < 0.06  # multinomial noise alone gives ~0.03 at 2000 samples
    wrong = probability_flow_endpoint(lambda x, sigma: denoiser(TOY, x, 1.2 * sigma), x_T, SIGMA_MAX, SIGMA_MIN, 1e-8, 1e-8)
    assert sliced_wasserstein(wrong, reference) > SWD_THRESHOLD


def test_conditional_ode_lands_on_its_class():
    x_T = SIGMA_MAX * torch.randn(1000, 2, generator=generator(4), dtype=torch.float64)
    landed = exact_ode_solution(TOY, x_T, SIGMA_MAX, SIGMA_MIN, class_labels=torch.ones(1000, dtype=torch.long),
                                rtol=1e-8, atol=1e-8)
    assert sliced_wasserstein(landed, sample(TOY, 20_000, generator(5), class_labels=1)) < SWD_THRESHOLD
    assert float(mode_coverage(TOY, landed).nearest[TOY.classes == 0].sum()) < 0.02


def test_euler_on_the_exact_network_converges_to_the_exact_endpoint():
    """Karras 2022 Algorithm 1 without the Heun correction, through EDMObjective and the exact network: the mean
    endpoint error falls roughly as 1/steps (a first-order method) and is measured against the exact ODE."""
    objective = EDMObjective(sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN)
    network = exact_network(TOY, objective)
    x_T = SIGMA_MAX * torch.randn(300, 2, generator=generator(6), dtype=torch.float64)
    x_exact = exact_ode_solution(TOY, x_T, SIGMA_MAX, SIGMA_MIN)
    errors = []
    for steps in (16, 64, 256):
        i = torch.arange(steps, dtype=torch.float64)  # Karras 2022 eq. 5, rho = 7
        sigmas = (SIGMA_MAX ** (1 / 7) + i / (steps - 1) * (SIGMA_MIN ** (1 / 7) - SIGMA_MAX ** (1 / 7))) ** 7
        x = x_T
        for sigma, sigma_next in zip(sigmas.tolist(), sigmas[1:].tolist() + [0.0]):
            D = objective.denoise(network(objective.network_input(x, sigma), objective.model_time(sigma)), x, sigma)
            x = x + (sigma_next - sigma) * (x - D) / sigma  # the last step (to sigma = 0) lands on D
        errors.append(float(ode_endpoint_error(x, x_exact).mean()))
    assert errors[0] > 2 * errors[1] > 4 * errors[2] > 0, errors
    assert float(ode_endpoint_error(x_exact, x_exact).max()) == 0.0


@pytest.mark.slow
def test_exact_ode_lands_on_an_8d_mixture_and_agrees_with_a_fine_rk4():
    mixture = random_mixture(dim=8, num_components=6, num_classes=3, seed=1)
    x_T = SIGMA_MAX * torch.randn(2000, 8, generator=generator(7), dtype=torch.float64)
    landed = exact_ode_solution(mixture, x_T, SIGMA_MAX, SIGMA_MIN)
    reference, second = sample(mixture, 20_000, generator(8)), sample(mixture, 2000, generator(9))
    assert sliced_wasserstein(landed, reference) < 1.5 * sliced_wasserstein(second, reference) + 0.01
    assert mode_coverage(mixture, landed).total_variation < 0.05
    # classic RK4 in s = ln sigma with 4000 even steps, on 100 of the starts: the same endpoints to 1e-7
    x, s_grid = x_T[:100], torch.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), 4001, dtype=torch.float64)

    def f(x, s):
        return x - denoiser(mixture, x, math.exp(s))

    for s, s_next in zip(s_grid[:-1].tolist(), s_grid[1:].tolist()):
        h = s_next - s
        k1 = f(x, s)
        k2 = f(x + h / 2 * k1, s + h / 2)
        k3 = f(x + h / 2 * k2, s + h / 2)
        k4 = f(x + h * k3, s_next)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    torch.testing.assert_close(denoiser(mixture, x, SIGMA_MIN), landed[:100], rtol=0, atol=1e-7)
