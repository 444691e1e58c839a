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
