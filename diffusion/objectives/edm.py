"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models").

    x = x0 + sigma eps,    ln sigma ~ N(P_mean, P_std^2)        (Table 1: P_mean = -1.2, P_std = 1.2)

The raw network F is wrapped by the preconditioning of Table 1 (sigma_data = 0.5):

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)      c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)             c_noise = ln(sigma) / 4

and trained with loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on
||D - x0||^2, which makes F's effective target unit-variance at every sigma (lambda c_out^2 = 1).
c_noise is handed to the network times 1000, so the sinusoidal time embedding our networks share
(made for DDPM's t in [0, 1000)) resolves it; the factor is part of the preconditioning, not the network.
Sampled with `heun` on Karras sigmas from sigma_max = 80 to sigma_min = 0.002 (rho = 7).
"""

from __future__ import annotations

import math

import torch

from diffusion.errors import UserError
from diffusion.objectives.base import Objective
from diffusion.noise_schedules import expand_like


class EDMObjective(Objective):
    name = "edm"
    sampler_families = ("sigma",)

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, noise_scale: float = 1000.0):
        if not (sigma_data > 0 and p_std > 0 and 0 < sigma_min < sigma_max):
            raise UserError("objective=edm needs sigma_data > 0, p_std > 0 and 0 < sigma_min < sigma_max, "
                            f"got sigma_data={sigma_data}, p_std={p_std}, sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_data, self.p_mean, self.p_std = float(sigma_data), float(p_mean), float(p_std)
        self.sigma_min, self.sigma_max, self.noise_scale = float(sigma_min), float(sigma_max), float(noise_scale)

    # -------- preconditioning (Table 1); sigma is a float or a [B] tensor
    def c_skip(self, sigma):
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma):
        return sigma * self.sigma_data / (sigma**2 + self.sigma_data**2) ** 0.5

    def c_in(self, sigma):
        return 1 / (sigma**2 + self.sigma_data**2) ** 0.5

    def c_noise(self, sigma):
        return torch.log(sigma) / 4 if isinstance(sigma, torch.Tensor) else math.log(sigma) / 4

    def weight(self, sigma):
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    # -------- training
    def draw_times(self, n, generator):
        return torch.exp(self.p_mean + self.p_std * torch.randn(n, generator=generator, dtype=torch.float64))

    def noisy(self, x0, noise, sigma):
        return x0 + expand_like(sigma, x0) * noise

    def loss(self, model_output, x0, noise, x_t, sigma):
        denoised = self.denoise(model_output.float(), x_t.float(), sigma)
        squared_error = ((denoised - x0.float()) ** 2).flatten(1).mean(dim=1)
        return squared_error * self.weight(sigma).to(squared_error)

    # -------- both
    def network_input(self, x, sigma):
        return x * (expand_like(self.c_in(sigma), x) if isinstance(sigma, torch.Tensor) else self.c_in(sigma))

    def model_time(self, sigma):
        return self.c_noise(sigma) * self.noise_scale

    def denoise(self, model_output, x, sigma):
        if isinstance(sigma, torch.Tensor):
            return expand_like(self.c_skip(sigma), x) * x + expand_like(self.c_out(sigma), x) * model_output
        return self.c_skip(sigma) * x + self.c_out(sigma) * model_output

    # -------- the sigma view: x = 1 * (x0 + sigma eps)
    def sigma_range(self):
        return self.sigma_min, self.sigma_max

    def from_sigma(self, sigma):
        return sigma, 1.0

    def sigma_of_model_time(self, model_time):
        return math.exp(4 * float(model_time) / self.noise_scale)  # inverse of noise_scale * c_noise = noise_scale ln(sigma) / 4

    def __repr__(self):
        return f"EDMObjective(sigma_data={self.sigma_data}, p_mean={self.p_mean}, p_std={self.p_std})"
