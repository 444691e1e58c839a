"""An exact testbed: Gaussian-mixture data whose ideal denoiser is a closed form, so that every error is measurable.

For data p(x0) = sum_k pi_k N(x0; mu_k, C_k) and the sigma view x = x0 + sigma eps, eps ~ N(0, I)
(Karras et al. 2022, "Elucidating the design space...", section 2):

    p(x; sigma)  = sum_k pi_k N(x; mu_k, C_k + sigma^2 I)                           the noised density
    w_k(x)       = pi_k N(x; mu_k, C_k + sigma^2 I) / p(x; sigma)                   posterior over components
    grad log p   = -sum_k w_k(x) (C_k + sigma^2 I)^-1 (x - mu_k)                    the score
    D(x; sigma)  = E[x0 | x] = x + sigma^2 grad log p(x; sigma)                     Tweedie (Efron 2011, eq. 2.8;
                 = sum_k w_k(x) [mu_k + C_k (C_k + sigma^2 I)^-1 (x - mu_k)]         Karras 2022, eq. 3)
    dx/dsigma    = (x - D(x; sigma)) / sigma                                        probability-flow ODE (Karras 2022, eq. 3)

A class c is a subset of components (p(x0 | c) keeps its components, weights renormalised), so the conditional
D_c and the classifier-free-guided D_u + w (D_c - D_u) (Ho & Salimans 2021) are exact too; the 2-D toy has two
classes of thin branching ridges after the toy example of Karras et al. 2024 ("Guiding a diffusion model with a
bad version of itself", Fig. 1). All of it is float64 and batch-first: x [B, d], sigma a float or [B].

    mixture.py        GaussianMixture; log_density, score, posterior_weights, denoiser, guided_denoiser,
                      autoguided_denoiser (D_0 + w (D_1 - D_0), Karras et al. 2024), sample
    toy.py            toy_mixture_2d(), random_mixture(dim, ...), broadened(mixture, s): a blurred copy (a known error)
    exact_network.py  exact_network(mixture, objective): the network a ddpm (epsilon | v | x0), edm or flow objective
                      turns into the exact D through its own `denoise`, so solvers and guidance run on it unchanged
    metrics.py        sliced_wasserstein, mean_log_density, mode_coverage (against the truth)
    ode.py            exact_ode_solution (DOP853 at rtol 1e-10 in ln sigma, then the jump to D), ode_endpoint_error
    plot.py           plot_fields(mixture, sigma, path): the 2-D density and the arrows D(x) - x, guided and not

Usage: a sampler's error against the exact ODE, and its distance from the data:

    mixture = toy_mixture_2d()
    x_T = 80.0 * torch.randn(1000, 2, dtype=torch.float64)              # x(sigma_max) ~ N(0, sigma_max^2 I)
    x_exact = exact_ode_solution(mixture, x_T, sigma_max=80.0)          # the ideal endpoint of each start
    network = exact_network(mixture, EDMObjective())                    # drop-in for a trained network
    # ... run any sampler with `network` from x_T into x_sampled, then:
    ode_endpoint_error(x_sampled, x_exact).mean(), sliced_wasserstein(x_sampled, sample(mixture, 20000, generator))

Tensors here are small: on a shared CPU, `torch.set_num_threads(1)` can make these calls many times faster.
This package imports only diffusion.objectives and diffusion.errors (and scipy for the ODE, matplotlib to plot).
"""

from diffusion.testbed.exact_network import class_labels_of, ddpm_alpha_bar, exact_network, sigma_view_denoiser
from diffusion.testbed.metrics import ModeCoverage, mean_log_density, mode_coverage, random_directions, sliced_wasserstein
from diffusion.testbed.mixture import (GaussianMixture, autoguided_denoiser, denoiser, guided_denoiser, log_density,
                                       posterior_weights, sample, score)
from diffusion.testbed.ode import exact_ode_solution, gaussian_flow, ode_endpoint_error, probability_flow_endpoint
from diffusion.testbed.plot import plot_fields
from diffusion.testbed.toy import broadened, random_mixture, toy_mixture_2d

__all__ = [
    "GaussianMixture", "log_density", "score", "posterior_weights", "denoiser", "guided_denoiser", "autoguided_denoiser",
    "sample", "toy_mixture_2d", "random_mixture", "broadened",
    "exact_network", "class_labels_of", "ddpm_alpha_bar", "sigma_view_denoiser",
    "sliced_wasserstein", "random_directions", "mean_log_density", "mode_coverage", "ModeCoverage",
    "exact_ode_solution", "probability_flow_endpoint", "gaussian_flow", "ode_endpoint_error",
    "plot_fields",
]
