"""The closed forms of diffusion/testbed/mixture.py against independent routes: autograd, another algebra, and
Monte-Carlo statistics of samples (each with its tolerance stated, each a test a wrong formula fails)."""

import math

import pytest
import torch
from scipy import stats
from scipy.spatial import cKDTree
from scipy.special import digamma

from diffusion.errors import UserError
from diffusion.testbed import (GaussianMixture, denoiser, guided_denoiser, log_density, posterior_weights,
                               random_mixture, sample, score, toy_mixture_2d)

TOY = toy_mixture_2d()
HIGH = random_mixture(dim=8, num_components=6, num_classes=3, seed=1)


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("mixture", [TOY, HIGH], ids=["toy2d", "random8d"])
def test_score_is_the_gradient_of_the_log_density(mixture):
    B = 64
    x = sample(mixture, B, generator(1), sigma=0.3)
    sigma = torch.cat([torch.zeros(4), torch.logspace(-2, 1, B - 4)]).double()  # per-row noise levels, sigma = 0 too
    labels = torch.arange(B) % (mixture.num_classes + 2) - 1  # -1 and num_classes are the null label
    for class_labels in (None, labels):
        x_ = x.clone().requires_grad_(True)
        (autograd,) = torch.autograd.grad(log_density(mixture, x_, sigma, class_labels).sum(), x_)
        torch.testing.assert_close(score(mixture, x, sigma, class_labels), autograd, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mixture", [TOY, HIGH], ids=["toy2d", "random8d"])
def test_tweedie_denoiser_equals_the_posterior_mean_of_the_components(mixture):
    """x + sigma^2 score == sum_k w_k [mu_k + C_k (C_k + sigma^2 I)^-1 (x - mu_k)], computed with linalg.solve."""
    x = sample(mixture, 32, generator(2), sigma=0.5)
    sigma = torch.logspace(-2, 1, 32).double()
    w = posterior_weights(mixture, x, sigma)  # [B, K]
    noised = mixture.covariances[None] + sigma[:, None, None, None] ** 2 * torch.eye(mixture.dim)  # [B, K, d, d]
    gain = torch.linalg.solve(noised, (x[:, None] - mixture.means[None])[..., None])[..., 0]  # [B, K, d]
    component_means = mixture.means[None] + torch.einsum("kij,bkj->bki", mixture.covariances, gain)
    expected = (w[..., None] * component_means).sum(1)
    torch.testing.assert_close(denoiser(mixture, x, sigma), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sigma", [0.1, 0.3, 1.0])
def test_denoiser_matches_an_importance_sampled_posterior_mean(sigma):
    """E[x0 | x] = sum_i x0_i N(x; x0_i, sigma^2) / sum_i N(...) over x0_i ~ p: within 5 Monte-Carlo standard errors
    (delta method for the ratio) plus 1e-3."""
    x0 = sample(TOY, 200_000, generator(3))  # [N, 2]
    x = sample(TOY, 16, generator(4), sigma=sigma)  # query points [Q, 2]
    log_w = -((x[:, None, :] - x0[None]) ** 2).sum(-1) / (2 * sigma**2)  # [Q, N]
    w = torch.softmax(log_w, dim=1)
    estimate = w @ x0  # [Q, 2]
    standard_error = ((w[..., None] ** 2) * (x0[None] - estimate[:, None]) ** 2).sum(1).sqrt()
    error = (estimate - denoiser(TOY, x, sigma)).abs()
    assert bool((error <= 5 * standard_error + 1e-3).all()), (error / standard_error).max()


def test_denoiser_residual_is_orthogonal_to_functions_of_x_in_8d():
    """The defining property of E[x0 | x]: r = x0 - D(x) has mean 0 and is uncorrelated with x and x^2 (|z| < 5 over
    N = 100k pairs). A D with its noise level 10% off fails the same test."""
    N, sigma = 100_000, 0.4
    x0 = sample(HIGH, N, generator(5))
    x = x0 + sigma * torch.randn(N, HIGH.dim, generator=generator(6), dtype=torch.float64)
    features = torch.cat([torch.ones(N, 1), x, x**2], dim=1)  # [N, 1 + 2d]

    def max_z(D):
        products = (x0 - D)[:, :, None] * features[:, None, :]  # [N, d, F]
        return float((products.mean(0) / (products.std(0) / math.sqrt(N))).abs().max())

    assert max_z(denoiser(HIGH, x, sigma)) < 5
    assert max_z(denoiser(HIGH, x, 1.1 * sigma)) > 5


@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_noised_samples_agree_with_the_closed_form_density(sigma):
    """For x ~ p(x; sigma) drawn by noising mixture samples: E[g(x) / p(x; sigma)] = integral of g = 1 for a Gaussian g
    narrower than every component (so g/p is bounded), within 4 standard errors; and the mean log-likelihood equals
    minus the Kozachenko-Leonenko nearest-neighbour entropy estimate within 0.03 nats."""
    N = 20_000
    x = sample(TOY, N, generator(7), sigma=sigma)
    log_p = log_density(TOY, x, sigma)
    s = 0.9 * sigma  # g = N(mixture mean, s^2 I), s^2 < sigma^2 <= every eigenvalue of C_k + sigma^2 I
    log_g = -((x - TOY.weights @ TOY.means) ** 2).sum(1) / (2 * s**2) - math.log(2 * math.pi * s**2)
    ratio = torch.exp(log_g - log_p)
    assert abs(float(ratio.mean()) - 1) < 4 * float(ratio.std()) / math.sqrt(N)
    k = 4  # Kozachenko & Leonenko 1987 / Kraskov et al. 2004 eq. 20, in d = 2 (unit-ball volume pi)
    distances, _ = cKDTree(x.numpy()).query(x.numpy(), k=k + 1)
    entropy = digamma(N) - digamma(k) + math.log(math.pi) + 2 * float(torch.tensor(distances[:, k]).log().mean())
    assert abs(-float(log_p.mean()) - entropy) < 0.03


def test_density_integrates_to_one_in_2d():
    axis = torch.linspace(-4, 4, 201, dtype=torch.float64)  # a Riemann sum of a smooth density: error ~1e-11 here
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    cell = float(axis[1] - axis[0]) ** 2
    for sigma in (0.05, 0.5):
        assert abs(float(log_density(TOY, grid, sigma).exp().sum()) * cell - 1) < 1e-9


@pytest.mark.parametrize("mixture, label", [(TOY, None), (HIGH, None), (TOY, 1), (HIGH, 2)],
                         ids=["toy2d", "random8d", "toy2d-class1", "random8d-class2"])
def test_samples_pass_a_ks_test_on_random_projections(mixture, label):
    """u^T x for x ~ p(x; sigma) (or p(x; sigma | c)) has the CDF sum_k pi_k Phi((s - u^T mu_k) / sqrt(u^T (C_k +
    sigma^2 I) u)) over the (class's) components; p-value > 1e-3 on 3 directions, 5000 samples."""
    sigma = 0.2
    x = sample(mixture, 5000, generator(8), class_labels=label, sigma=sigma)
    truth = mixture if label is None else mixture.class_mixture(label)
    u = torch.randn(mixture.dim, 3, generator=generator(9), dtype=torch.float64)
    u = u / u.norm(dim=0)
    for j in range(3):
        mean = (truth.means @ u[:, j]).numpy()
        std = (torch.einsum("i,kij,j->k", u[:, j], truth.covariances, u[:, j]) + sigma**2).sqrt().numpy()
        weights = truth.weights.numpy()
        result = stats.kstest((x @ u[:, j]).numpy(), lambda s: (weights * stats.norm.cdf((s[:, None] - mean) / std)).sum(1))
        assert result.pvalue > 1e-3


def test_class_conditionals_add_up_to_the_unconditional_density():
    """log p(x; sigma) = logsumexp_c [log P(c) + log p(x; sigma | c)], and a null label (-1 or C) is unconditional."""
    x = sample(HIGH, 50, generator(10), sigma=0.3)
    by_class = torch.stack([log_density(HIGH, x, 0.3, torch.full((50,), c)) + HIGH.weights[HIGH.classes == c].sum().log()
                            for c in range(HIGH.num_classes)])
    torch.testing.assert_close(torch.logsumexp(by_class, 0), log_density(HIGH, x, 0.3), rtol=1e-12, atol=1e-12)
    for null in (-1, HIGH.num_classes):
        torch.testing.assert_close(denoiser(HIGH, x, 0.3, torch.full((50,), null)), denoiser(HIGH, x, 0.3))


def test_guidance_is_a_lerp_of_the_exact_halves():
    x = sample(TOY, 200, generator(11), sigma=0.5)
    labels = torch.ones(200, dtype=torch.long)
    D_u, D_c = denoiser(TOY, x, 0.5), denoiser(TOY, x, 0.5, labels)
    torch.testing.assert_close(guided_denoiser(TOY, x, 0.5, labels, 3.0), D_u + 3.0 * (D_c - D_u))
    torch.testing.assert_close(guided_denoiser(TOY, x, 0.5, labels, 1.0), D_c)


def test_infinite_sigma_denoises_to_the_mean():
    x = torch.randn(4, 2, generator=generator(12), dtype=torch.float64)
    sigma = torch.tensor([math.inf, 1.0, math.inf, 0.5], dtype=torch.float64)
    D = denoiser(TOY, x, sigma, torch.tensor([0, 0, -1, -1]))
    class_0 = TOY.class_mixture(0)
    torch.testing.assert_close(D[0], class_0.weights @ class_0.means)
    torch.testing.assert_close(D[2], TOY.weights @ TOY.means)
    assert bool(torch.isfinite(D).all())


@pytest.mark.parametrize("weights, means, covariances, classes", [
    ([1.0, -1.0], [[0.0], [1.0]], [[[1.0]], [[1.0]]], None),  # a negative weight
    ([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, -1.0]]], None),  # not positive definite
    ([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]], None),  # not symmetric
    ([1.0, 1.0], [[0.0], [1.0]], [[[1.0]]], None),  # shapes disagree
    ([1.0, 1.0], [[0.0], [1.0]], [[[1.0]], [[1.0]]], [0, 2]),  # class 1 unused
])
def test_bad_mixtures_are_refused_in_one_line(weights, means, covariances, classes):
    with pytest.raises(UserError) as error:
        GaussianMixture(torch.tensor(weights), torch.tensor(means), torch.tensor(covariances),
                        None if classes is None else torch.tensor(classes))
    assert "\n" not in str(error.value)
