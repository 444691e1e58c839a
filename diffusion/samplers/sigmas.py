"""The sigma grid shared by the k-diffusion-style samplers (euler, heun, dpmpp_2m).

These samplers work on the sigma view of an objective (see diffusion/objectives/base.py):

    x = x0 + sigma eps          (the network sees x_t = alpha(sigma) x at the time t(sigma))
    D(x; sigma) = pred_x0       (the objective turns the raw network output into it)
    dx/dsigma = (x - D(x; sigma)) / sigma        (the probability-flow ODE, Karras et al. 2022, eq. 3)

so one sampler serves epsilon, v and x0 networks on any DDPM schedule and EDM networks alike. The grid
descends through `n` sigmas and ends at sigma = 0 (the final step lands on pred_x0); `sigmas=`

- `default`: the schedule's own sigmas at the integer timesteps `timestep_spacing` picks (EDM: karras);
- `karras`: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, rho = 7
  (Karras et al. 2022, eq. 5), between the schedule's smallest and largest sigma;
- `exponential`: log sigma linear from sigma_max to sigma_min.
"""

from __future__ import annotations

import numpy as np

from diffusion.errors import UserError, check_choice
from diffusion.samplers.base import Sampler
from diffusion.samplers.timesteps import TIMESTEP_SPACINGS, timestep_grid

SIGMA_SPACINGS = ("default", "karras", "exponential")


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: n sigmas from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), n))


class SigmaSampler(Sampler):
    """Base of euler, heun and dpmpp_2m: the grid over an objective's sigmas and D(x; sigma)."""

    family = "sigma"

    def __init__(
        self,
        objective,  # what the network output means: any objective with a sigma view (ddpm, edm)
        sigmas: str = "default",  # default | karras | exponential
        timestep_spacing: str = "trailing",  # for sigmas=default on a DDPM schedule: which integer timesteps
        rho: float = 7.0,  # the Karras spacing's exponent (eq. 5)
        clip_sample: bool = False,  # clamp pred_x0 to [-clip_range, clip_range] (pixel data)
        clip_range: float = 1.0,
    ):
        check_choice(f"{self.name} sigma spacing (sampler.sigmas)", sigmas, SIGMA_SPACINGS)
        check_choice("timestep spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if isinstance(rho, bool) or not (isinstance(rho, (int, float)) and rho > 0):
            raise UserError(f"sampler.rho must be a number > 0 (Karras et al. use 7), got {rho!r}")
        if "sigma" not in objective.sampler_families:
            raise UserError(f"{self.name} samples objectives with a sigma view (ddpm, edm), not {objective.name}")
        self.objective, self.sigma_spacing, self.timestep_spacing, self.rho = objective, sigmas, timestep_spacing, float(rho)
        self.clip_sample, self.clip_range = clip_sample, clip_range

    def level_grid(self, n: int) -> np.ndarray:
        sigma_min, sigma_max = self.objective.sigma_range()
        spacing = self.sigma_spacing
        schedule = getattr(self.objective, "schedule", None)
        if spacing == "default" and schedule is None:
            spacing = "karras"  # EDM's own grid
        if spacing == "default":
            return self.objective.sigmas[timestep_grid(schedule.num_timesteps, n, self.timestep_spacing)]
        if spacing == "karras":
            return karras_sigmas(sigma_min, sigma_max, n, self.rho)
        return exponential_sigmas(sigma_min, sigma_max, n)

    # the start of sampling and the inpainting re-noise, in the sigma view x = x0 + sigma eps
    def prior(self, noise, sigmas):
        return noise * self.objective.prior_std(float(sigmas[0]))

    def noised(self, x0, noise, sigma):
        return x0 + float(sigma) * noise

    def implied_noise(self, x, pred_x0, sigma):
        return (x - pred_x0) / sigma

    def denoised(self, denoise, x, sigma):
        """(D(x; sigma), raw network output): the network is called on alpha x at t(sigma)."""
        t, alpha = self.objective.from_sigma(sigma)
        x_t = alpha * x
        output = denoise(self.objective.network_input(x_t, t), self.objective.model_time(t)).to(x.dtype)
        return self.clip(self.objective.denoise(output, x_t, t)), output

    def __repr__(self):
        return f"{type(self).__name__}(objective={self.objective}, sigmas={self.sigma_spacing}, clip_sample={self.clip_sample})"
