"""DDPM (Ho et al. 2020) on a discrete noise schedule: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, t in
{0 .. T-1} uniform, the network predicting epsilon, v or x0, weighted uniform or min-SNR.

This file is the one place the three parameterisations are converted into each other (Salimans & Ho
2022, section 4; with a = alpha-bar_t):

    epsilon:  x0 = (x_t - sqrt(1-a) eps) / sqrt(a)
    x0:       eps = (x_t - sqrt(a) x0) / sqrt(1-a)
    v = sqrt(a) eps - sqrt(1-a) x0:   x0 = sqrt(a) x_t - sqrt(1-a) v,  eps = sqrt(1-a) x_t + sqrt(a) v

Its sigma view (Karras et al. 2022, section 2 / Table 1 "VP"): sigma_t = sqrt((1 - a_t) / a_t), so
x_t = a_t^(1/2) (x0 + sigma_t eps). Between the integer timesteps, t(sigma) is linear in log sigma,
as in k-diffusion and diffusers (`_sigma_to_t`); the network then sees a fractional timestep.
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion.errors import UserError, check_choice
from diffusion.noise_schedules import NoiseSchedule, expand_like
from diffusion.objectives.base import Objective
from diffusion.objectives.weighting import PREDICTION_TYPES, WEIGHTINGS, loss_weight

# alpha-bar of a zero-terminal-SNR schedule's last step is 0 (sigma = inf); the sigma view uses 2^-24
# there, as diffusers' Euler does (rescale_betas_zero_snr), so the solvers start from a finite sigma
MIN_ALPHA_BAR = 2.0**-24


class DDPMObjective(Objective):
    name = "ddpm"
    sampler_families = ("discrete", "sigma")
    needs_schedule = True  # built on the `schedule` config group's betas

    def __init__(self, schedule: NoiseSchedule, prediction_type: str = "epsilon", loss_weighting: str = "uniform",
                 min_snr_gamma: float = 5.0,
                 learned_variance: bool = False):  # the network also outputs Nichol & Dhariwal's v (2C channels)
        check_choice("prediction type", prediction_type, PREDICTION_TYPES)
        check_choice("loss weighting", loss_weighting, WEIGHTINGS)
        if schedule.zero_terminal_snr and prediction_type == "epsilon":
            # At SNR 0, x_t is pure noise: an epsilon prediction carries no information about x0.
            raise UserError("a zero-terminal-SNR schedule needs prediction_type v or x0 (Lin et al. 2024, section 3.2); "
                            "epsilon cannot recover x0 at the last timestep")
        self.schedule, self.prediction_type, self.learned_variance = schedule, prediction_type, bool(learned_variance)
        self.loss_weighting, self.min_snr_gamma = loss_weighting, float(min_snr_gamma)
        a = schedule.alphas_cumprod.numpy().copy()
        a[a <= 0] = MIN_ALPHA_BAR  # only a zero-terminal-SNR schedule's last step
        self.sigmas = np.sqrt((1 - a) / a)  # [T] increasing in t
        self.log_sigmas = np.log(self.sigmas)

    # -------- the parameterisation (the conversions, once)
    def sqrt_alpha_bars(self, t, x: torch.Tensor):
        """(sqrt(a_t), sqrt(1 - a_t)): Python floats for a fractional (float) t, else float64 values from the
        schedule for an int or a [B] tensor t, shaped and cast to broadcast over x."""
        if isinstance(t, float):
            a = self.alpha_bar(t)
            return a**0.5, (1 - a) ** 0.5
        return self.schedule.sqrt_alpha_bars(t, x)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """What a network of this prediction type should output for x_t = sqrt(a) x0 + sqrt(1-a) noise."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "x0":
            return x0
        sqrt_a, sqrt_1m_a = self.sqrt_alpha_bars(t, x0)
        return sqrt_a * noise - sqrt_1m_a * x0  # v

    def split(self, model_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the prediction, the variance output v or None): a learned-variance network (Nichol & Dhariwal 2021,
        DiT) outputs 2C channels, the prediction first and then v in [-1, 1] (see samplers/ddpm.py)."""
        if not self.learned_variance:
            return model_output, None
        return model_output.chunk(2, dim=1)

    def to_x0_eps(self, model_output: torch.Tensor, x_t: torch.Tensor, t):
        """(pred_x0, pred_eps) from the network output, using x_t = sqrt(a) x0 + sqrt(1-a) eps."""
        model_output = self.split(model_output)[0]
        sqrt_a, sqrt_1m_a = self.sqrt_alpha_bars(t, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - sqrt_1m_a * model_output) / sqrt_a, model_output
        if self.prediction_type == "x0":
            return model_output, self.eps_from_x0(x_t, model_output, t)
        # v: since a + (1-a) = 1, x0 = sqrt(a) x_t - sqrt(1-a) v and eps = sqrt(1-a) x_t + sqrt(a) v
        return sqrt_a * x_t - sqrt_1m_a * model_output, sqrt_1m_a * x_t + sqrt_a * model_output

    def eps_from_x0(self, x_t: torch.Tensor, pred_x0: torch.Tensor, t) -> torch.Tensor:
        """The noise x_t holds if its clean sample is pred_x0: eps = (x_t - sqrt(a) x0) / sqrt(1-a)."""
        sqrt_a, sqrt_1m_a = self.sqrt_alpha_bars(t, x_t)
        return (x_t - sqrt_a * pred_x0) / sqrt_1m_a

    def from_x0_eps(self, pred_x0: torch.Tensor, pred_eps: torch.Tensor, t) -> torch.Tensor:
        """The inverse of `to_x0_eps`: (x0, eps) as the output of a network of this prediction type."""
        return self.target(pred_x0, pred_eps, t)

    def denoise(self, model_output, x_t, t):
        return self.to_x0_eps(model_output, x_t, t)[0]

    # -------- training: t ~ U{0..T-1}
    def draw_times(self, n, generator):
        return torch.randint(0, self.schedule.num_timesteps, (n,), generator=generator)

    def noisy(self, x0, noise, t):
        return self.schedule.add_noise(x0, noise, t)

    def loss(self, model_output, x0, noise, x_t, t):
        """Per-example weighted mean squared error [B] against `target` (weights: objectives/weighting.py)."""
        if self.learned_variance:
            raise UserError("objective.learned_variance is for sampling published checkpoints (DiT); training the "
                            "variance needs the variational bound term (Nichol & Dhariwal 2021, eq. 16), not implemented")
        weight = loss_weight(self.schedule.snr(t), self.prediction_type, self.loss_weighting, self.min_snr_gamma)
        squared_error = (model_output.float() - self.target(x0, noise, t).float()) ** 2
        per_example = squared_error.flatten(1).mean(dim=1)  # [B]
        return per_example * expand_like(weight, per_example)

    # -------- sampling
    def alpha_bar(self, t) -> float:
        """alpha-bar at a (possibly fractional) timestep: 1 / (1 + sigma(t)^2), log sigma linear in t."""
        if float(t) == int(t):
            return float(self.schedule.alpha_bar(int(t)))
        sigma = float(np.exp(np.interp(float(t), np.arange(len(self.sigmas)), self.log_sigmas)))
        return 1.0 / (1.0 + sigma**2)

    def sigma_range(self):
        return float(self.sigmas[0]), float(self.sigmas[-1])

    def from_sigma(self, sigma):
        t = float(np.interp(np.log(sigma), self.log_sigmas, np.arange(len(self.sigmas))))
        return t, 1.0 / (1.0 + sigma**2) ** 0.5

    def sigma_of_model_time(self, model_time):
        # the network receives the (possibly fractional) timestep itself; log sigma is linear between integers
        return float(np.exp(np.interp(float(model_time), np.arange(len(self.sigmas)), self.log_sigmas)))

    def prior_std(self, sigma_max):
        # the VP prior x_T ~ N(0, I) in the sigma view: x_T / sqrt(a_T) has std sqrt(1 + sigma_max^2)
        return (1.0 + sigma_max**2) ** 0.5

    def __repr__(self):
        learned = ", learned_variance=True" if self.learned_variance else ""
        return f"DDPMObjective(schedule={self.schedule.name}, prediction_type={self.prediction_type}{learned})"
