"""Problems with an exact answer that several test files solve with the samplers."""

from __future__ import annotations

import math


def gaussian_denoiser(solver, mu, std):
    """The exact denoiser for data N(mu, std^2): D(x; sigma) = mu + std^2 / (std^2 + sigma^2) (x - mu),
    handed to an EDM solver through its preconditioning (the network's input is c_in x at 1000 c_noise)."""
    edm = solver.objective

    def denoise(x_in, model_time):
        sigma = math.exp(4 * model_time / 1000)
        x = x_in / edm.c_in(sigma)
        d = mu + std**2 / (std**2 + sigma**2) * (x - mu)
        return (d - edm.c_skip(sigma) * x) / edm.c_out(sigma)
    return denoise


class GaussianFlow:
    """The rectified flow z_t = (1 - t) x0 + t eps of data x0 ~ N(mu, s^2 I), in closed form (float64 tensors).

    z_t ~ N(a mu, sigma_t^2 I) with a = 1 - t, sigma_t^2 = a^2 s^2 + t^2. The marginal velocity E[eps - x0 | z_t] is
    v(z, t) = (t - a s^2) / sigma_t^2 (z - a mu) - mu, whose ODE keeps (z - a mu) / sigma_t fixed, so the exact
    flow map is z_r = a_r mu + sigma_r / sigma_t (z_t - a_t mu) and the average velocity over [r, t] is
    u(z, r, t) = (z - z_r) / (t - r) (MeanFlow's definition, Geng et al. 2025 eq. 3)."""

    def __init__(self, mu, s):
        self.mu, self.s = mu, s

    def sigma(self, t):
        return ((1 - t) ** 2 * self.s**2 + t**2) ** 0.5

    def velocity(self, z, t):
        a = 1 - t
        return (t - a * self.s**2) / self.sigma(t) ** 2 * (z - a * self.mu) - self.mu

    def flow_map(self, z, r, t):
        return (1 - r) * self.mu + self.sigma(r) / self.sigma(t) * (z - (1 - t) * self.mu)

    def average_velocity(self, z, r, t):
        return (z - self.flow_map(z, r, t)) / (t - r)

    def conditional_velocity_variance(self, t):
        """Var(eps - x0 | z_t) per coordinate: what no network can remove from a flow-matching loss."""
        return 1 + self.s**2 - (t - (1 - t) * self.s**2) ** 2 / self.sigma(t) ** 2
