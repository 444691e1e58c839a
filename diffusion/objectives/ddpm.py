"""DDPM (Ho et al. 2020) on a discrete noise schedule: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, t in
{0 .. T-1} uniform, the network predicting epsilon, v or x0, weighted uniform or min-SNR.

Its sigma view (Karras et al. 2022, section 2 / Table 1 "VP"): sigma_t = sqrt((1 - a_t) / a_t), so
x_t = a_t^(1/2) (x0 + sigma_t eps). Between the integer timesteps, t(sigma) is linear in log sigma,
as in k-diffusion and diffusers (`_sigma_to_t`); the network then sees a fractional timestep.
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion.errors import check_choice
from diffusion.losses import WEIGHTINGS, diffusion_loss
from diffusion.objectives.base import Objective
from diffusion.schedules import PREDICTION_TYPES, NoiseSchedule

# alpha-bar of a zero-terminal-SNR schedule's last step is 0 (sigma = inf); the sigma view uses 2^-24
# there, as diffusers' Euler does (rescale_betas_zero_snr), so the solvers start from a finite sigma
MIN_ALPHA_BAR = 2.0**-24


class DDPMObjective(Objective):
    name = "ddpm"
    sampler_families = ("discrete", "sigma")

    def __init__(self, schedule: NoiseSchedule, prediction_type: str = "epsilon", loss_weighting: str = "uniform",
                 min_snr_gamma: float = 5.0):
        check_choice("diffusion.prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("diffusion.loss_weighting", loss_weighting, WEIGHTINGS)
        self.schedule, self.prediction_type = schedule, prediction_type
        self.loss_weighting, self.min_snr_gamma = loss_weighting, float(min_snr_gamma)
        a = schedule.alphas_cumprod.numpy().copy()
        a[a <= 0] = MIN_ALPHA_BAR  # only a zero-terminal-SNR schedule's last step
        self.sigmas = np.sqrt((1 - a) / a)  # [T] increasing in t
        self.log_sigmas = np.log(self.sigmas)

    # -------- training: t ~ U{0..T-1}
    def draw_times(self, n, generator):
        return torch.randint(0, self.schedule.num_timesteps, (n,), generator=generator)

    def noisy(self, x0, noise, t):
        return self.schedule.add_noise(x0, noise, t)

    def loss(self, model_output, x0, noise, x_t, t):
        return diffusion_loss(model_output, x0, noise, t, self.schedule, self.prediction_type,
                              self.loss_weighting, self.min_snr_gamma)

    # -------- sampling
    def alpha_bar(self, t) -> float:
        """alpha-bar at a (possibly fractional) timestep: 1 / (1 + sigma(t)^2), log sigma linear in t."""
        if float(t) == int(t):
            return float(self.schedule.alpha_bar(int(t)))
        sigma = float(np.exp(np.interp(float(t), np.arange(len(self.sigmas)), self.log_sigmas)))
        return 1.0 / (1.0 + sigma**2)

    def denoise(self, model_output, x_t, t):
        if isinstance(t, torch.Tensor) and t.ndim > 0:  # a batch of integer timesteps
            return self.schedule.to_x0_eps(self.prediction_type, model_output, x_t, t)[0]
        a = self.alpha_bar(t)
        sqrt_a, sqrt_1m_a = a**0.5, (1 - a) ** 0.5
        if self.prediction_type == "epsilon":
            return (x_t - sqrt_1m_a * model_output) / sqrt_a
        if self.prediction_type == "x0":
            return model_output
        return sqrt_a * x_t - sqrt_1m_a * model_output  # v

    def sigma_range(self):
        return float(self.sigmas[0]), float(self.sigmas[-1])

    def from_sigma(self, sigma):
        t = float(np.interp(np.log(sigma), self.log_sigmas, np.arange(len(self.sigmas))))
        return t, 1.0 / (1.0 + sigma**2) ** 0.5

    def prior_std(self, sigma_max):
        # the VP prior x_T ~ N(0, I) in the sigma view: x_T / sqrt(a_T) has std sqrt(1 + sigma_max^2)
        return (1.0 + sigma_max**2) ** 0.5

    def __repr__(self):
        return f"DDPMObjective(schedule={self.schedule.name}, prediction_type={self.prediction_type})"

