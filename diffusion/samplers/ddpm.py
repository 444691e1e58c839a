"""DDPM ancestral sampling (Ho et al. 2020): draw x_{t_prev} from the posterior q(x_{t_prev} | x_t, x0)
with x0 replaced by the network's estimate. Works on any sub-grid of timesteps (the betas of the
skipped steps are folded into one: beta = 1 - alpha_bar_t / alpha_bar_t_prev), e.g. DiT's 250 of 1000.

The variance of each step (`variance_type`):
    fixed_small    beta-tilde = (1 - a_prev) / (1 - a_t) beta            (Ho et al. eq. 7)
    fixed_large    beta                                                  (Ho et al. section 3.2)
    learned_range  exp(f log beta + (1 - f) log beta-tilde), f = (v + 1) / 2, with v the network's extra output
                   channels (Nichol & Dhariwal 2021, eq. 15; DiT samples this way)
"""

from __future__ import annotations

import math

import torch

from diffusion.errors import UserError, check_choice
from diffusion.samplers.base import SamplerStep
from diffusion.samplers.timesteps import TimestepSampler, alpha_bars, noise_or_draw

VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")


def posterior_mean_coefficients(a_t: float, a_prev: float) -> tuple[float, float]:
    """Ho et al. 2020, eq. 7: mu = c_x0 * x0 + c_xt * x_t for the step t -> t_prev."""
    beta = 1 - a_t / a_prev
    c_x0 = a_prev**0.5 * beta / (1 - a_t)
    c_xt = (1 - beta) ** 0.5 * (1 - a_prev) / (1 - a_t)
    return c_x0, c_xt


def posterior_variance(a_t: float, a_prev: float, variance_type: str) -> float:
    """fixed_small: beta-tilde = (1 - a_prev) / (1 - a_t) * beta (eq. 7); fixed_large: beta (section 3.2)."""
    beta = 1 - a_t / a_prev
    return beta if variance_type == "fixed_large" else (1 - a_prev) / (1 - a_t) * beta


def learned_log_variance(v: torch.Tensor, a_t: float, a_prev: float) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 15: log Sigma = f log beta + (1 - f) log beta-tilde with f = (v + 1) / 2;
    beta-tilde is floored at 1e-20 so its log stays finite (the first step of a grid has beta-tilde ~ 0)."""
    beta = 1 - a_t / a_prev
    log_beta_tilde = math.log(max(posterior_variance(a_t, a_prev, "fixed_small"), 1e-20))
    f = (v + 1) / 2
    return f * math.log(beta) + (1 - f) * log_beta_tilde


class DDPMSampler(TimestepSampler):
    name = "ddpm"
    stochastic = True

    def __init__(self, objective, timestep_spacing: str = "leading", clip_sample: bool = False, clip_range: float = 1.0,
                 variance_type: str = "fixed_small"):
        super().__init__(objective, timestep_spacing, clip_sample, clip_range)
        check_choice("variance type", variance_type, VARIANCE_TYPES)
        if variance_type == "learned_range" and not getattr(objective, "learned_variance", False):
            raise UserError("variance_type=learned_range needs a network that outputs its variance (a learned-sigma "
                            "model such as DiT-XL/2); this one does not: use fixed_small")
        self.variance_type = variance_type

    def step(self, denoise, x_t, t, t_prev, memory, noise=None) -> SamplerStep:
        """`noise` is the standard normal draw scaled by the posterior standard deviation; no noise is
        added on the final step (t_prev = -1), as in Ho et al. Algorithm 2."""
        a_t, a_prev = alpha_bars(self.schedule, t, t_prev)
        pred_x0, _, output = self.predict(denoise, x_t, t)
        c_x0, c_xt = posterior_mean_coefficients(a_t, a_prev)
        prev_sample = c_x0 * pred_x0 + c_xt * x_t
        if t_prev >= 0:
            if self.variance_type == "learned_range":
                std = torch.exp(0.5 * learned_log_variance(self.objective.split(output)[1], a_t, a_prev))
            else:
                std = posterior_variance(a_t, a_prev, self.variance_type) ** 0.5
            prev_sample = prev_sample + std * noise_or_draw(noise, x_t)
        return SamplerStep(prev_sample, pred_x0, output)
