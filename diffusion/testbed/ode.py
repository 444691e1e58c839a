"""The exact probability-flow ODE solution, to measure a sampler's error against.

Karras et al. 2022 eq. 3 with sigma(t) = t (EDM's choice):  dx / dsigma = (x - D(x; sigma)) / sigma.
It is integrated in s = ln sigma, where it reads dx / ds = x - D(x; sigma) and the step sizes are even over the
decades of sigma, from sigma_max down to sigma_min by an adaptive 8th-order Runge-Kutta (DOP853, scipy
solve_ivp) at tight tolerances, and then, like the last step of EDM's samplers, jumps to D(x; sigma_min) (an
Euler step from sigma_min to 0). With the exact D the endpoint is the deterministic map a perfect network and
a perfect solver would give; a sampler's distance from it is the sampler's error alone.

For one Gaussian N(mu, C) the flow is linear, x(sigma) = mu + (C + sigma^2 I)^(1/2) (C + sigma_max^2 I)^(-1/2)
(x(sigma_max) - mu); `gaussian_flow` gives it, so the integrator is tested against a closed form.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from diffusion.errors import UserError
from diffusion.testbed.mixture import GaussianMixture, denoiser, guided_denoiser

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [B, d], sigma [B]) -> D [B, d]


def probability_flow_endpoint(denoise: Denoise, x_start: torch.Tensor, sigma_max: float, sigma_min: float = 0.002,
                              rtol: float = 1e-10, atol: float = 1e-10) -> torch.Tensor:
    """x(sigma_min) of dx/dsigma = (x - D)/sigma from x(sigma_max) = x_start [B, d], then D(x; sigma_min): [B, d]."""
    from scipy.integrate import solve_ivp  # scipy only where the ODE is solved

    if not 0 < sigma_min < sigma_max < math.inf:
        raise UserError(f"the exact ODE needs 0 < sigma_min < sigma_max < inf, got {sigma_min} and {sigma_max}")
    shape = x_start.shape
    B = shape[0]

    def slope(s: float, flat: np.ndarray) -> np.ndarray:  # dx / d ln sigma = x - D(x; sigma)
        x = torch.from_numpy(flat).reshape(shape)
        sigma = torch.full((B,), math.exp(s), dtype=torch.float64)
        return (x - denoise(x, sigma)).reshape(-1).numpy()

    start = x_start.to(torch.float64).reshape(-1).cpu().numpy()
    solution = solve_ivp(slope, (math.log(sigma_max), math.log(sigma_min)), start, method="DOP853",
                         rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"the exact probability-flow ODE did not converge: {solution.message}")
    x_min = torch.from_numpy(solution.y[:, -1].copy()).reshape(shape)
    return denoise(x_min, torch.full((B,), sigma_min, dtype=torch.float64))


def exact_ode_solution(mixture: GaussianMixture, x_start: torch.Tensor, sigma_max: float, sigma_min: float = 0.002,
                       class_labels=None, guidance_scale: float = 1.0, rtol: float = 1e-10,
                       atol: float = 1e-10) -> torch.Tensor:
    """The exact ODE endpoint for the mixture's D (conditional where labels are given, guided where the scale is
    not 1: D_u + w (D_c - D_u)) from x_start [B, d] at sigma_max: [B, d]."""
    if class_labels is None:
        return probability_flow_endpoint(lambda x, sigma: denoiser(mixture, x, sigma), x_start, sigma_max, sigma_min,
                                         rtol, atol)
    return probability_flow_endpoint(lambda x, sigma: guided_denoiser(mixture, x, sigma, class_labels, guidance_scale),
                                     x_start, sigma_max, sigma_min, rtol, atol)


def gaussian_flow(mean: torch.Tensor, covariance: torch.Tensor, x_start: torch.Tensor, sigma_max: float,
                  sigma: float) -> torch.Tensor:
    """The closed-form flow of a single Gaussian N(mean, covariance) from sigma_max to sigma: [B, d]."""
    eigenvalues, Q = torch.linalg.eigh(covariance.to(torch.float64))
    gain = ((eigenvalues + sigma**2) / (eigenvalues + sigma_max**2)).sqrt()  # per eigen-direction
    return mean + ((x_start.to(torch.float64) - mean) @ Q * gain) @ Q.T


def ode_endpoint_error(x: torch.Tensor, x_exact: torch.Tensor) -> torch.Tensor:
    """Per-sample Euclidean distance between a sampler's endpoints and the exact ones from the same starts: [B]."""
    return (x.to(torch.float64) - x_exact.to(torch.float64)).norm(dim=1)
