"""The sigma grid and the loop shared by the k-diffusion-style solvers (euler, heun, dpm_solver).

These solvers work on the sigma view of an objective (see diffusion/objectives/base.py):

    x = x0 + sigma eps          (the network sees x_t = alpha(sigma) x at the time t(sigma))
    D(x; sigma) = pred_x0       (the objective turns the raw network output into it)
    dx/dsigma = (x - D(x; sigma)) / sigma        (the probability-flow ODE, Karras et al. 2022, eq. 3)

so one solver serves epsilon, v and x0 networks on any DDPM schedule and EDM networks alike. The grid
descends through `n` sigmas and ends at sigma = 0 (the final step lands on pred_x0); `sigmas=`

- `default`: the schedule's own sigmas at the integer timesteps `timestep_spacing` picks (EDM: karras);
- `karras`: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, rho = 7
  (Karras et al. 2022, eq. 5), between the schedule's smallest and largest sigma;
- `exponential`: log sigma linear from sigma_max to sigma_min.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from diffusion.errors import UserError, check_choice
from diffusion.objectives import DDPMObjective, Objective
from diffusion.schedulers.base import TIMESTEP_SPACINGS, timestep_grid

SIGMA_SPACINGS = ("default", "karras", "exponential")


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: n sigmas from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), n))


@dataclass
class SolverStep:
    """What one solver step returns: the next sample, and what the step believed about x0."""

    prev_sample: torch.Tensor
    pred_x0: torch.Tensor
    model_output: torch.Tensor
    memory: dict = field(default_factory=dict)  # carried to the next step (multistep solvers)


def check_steps(num_steps, minimum: int = 1, name: str = "this sampler") -> None:
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < minimum:
        raise UserError(f"steps must be an integer >= {minimum} for {name}, got {num_steps!r}")


class LevelSampler:
    """What the pipeline asks of any sampler: a descending grid of noise levels, the start sample,
    the image-to-image tail and start, the inpainting re-noise, and `run`. Subclasses define the
    levels and `step`; `family` says which objectives it fits ("sigma" or "flow")."""

    family = "sigma"
    name = "sampler"
    min_steps = 1
    final_level = 0.0

    def levels(self, num_steps: int) -> np.ndarray:
        raise NotImplementedError

    def timesteps(self, num_steps: int) -> list[float]:
        """The descending noise levels the solver starts each step from (the last step goes to 0)."""
        check_steps(num_steps, self.min_steps, self.name)
        return [float(s) for s in self.levels(int(num_steps))]

    def previous_timesteps(self, levels: list[float]) -> list[float]:
        return list(levels[1:]) + [self.final_level]

    def img2img_timesteps(self, num_steps: int, strength: float) -> list[float]:
        """The last round(strength * num_steps) levels of the grid (at least one), as for DDIM."""
        if not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise UserError(f"strength must be in (0, 1], got {strength!r}")
        grid = self.timesteps(num_steps)
        kept = max(1, min(num_steps, round(strength * num_steps)))
        return grid[num_steps - kept:]

    def is_stochastic(self, eta) -> bool:
        return False

    def check_eta(self, eta) -> None:
        if eta:
            raise UserError(f"eta={eta} applies to ddim and ddpm only; {self.name} is deterministic (use eta=0)")

    def run(self, denoise, levels, x, generators, eta=0.0, callback=None, progress=False, inpaint=None):
        """Step x down `levels` and on to the final level; `inpaint(x, level)` re-imposes the known
        region after every step. Returns the clean sample."""
        from diffusion.sampling import StepInfo

        self.check_eta(eta)
        levels = [float(s) for s in levels]
        following = self.previous_timesteps(levels)
        pairs = list(zip(levels, following))
        if progress:
            from tqdm.auto import tqdm

            pairs = tqdm(pairs, desc="sampling", unit="step", leave=False)
        memory: dict = {}
        x = x if x.dtype == torch.float64 else x.float()  # float64 kept (the parity tests run in it)
        for index, (level, level_next) in enumerate(pairs):
            out = self.step(denoise, x, level, level_next, memory, last=index == len(levels) - 1)
            memory = out.memory
            if callback is not None:
                callback(StepInfo(index, level, level_next, x, out.model_output, out.pred_x0,
                                  self.implied_noise(x, out.pred_x0, level), out.prev_sample))
            x = out.prev_sample
            if inpaint is not None:
                x = inpaint(x, level_next)
        return x

    def step(self, denoise, x, level, level_next, memory, last) -> SolverStep:
        raise NotImplementedError


class SigmaSolver(LevelSampler):
    """Base of euler, heun and dpmpp_2m: the grid over an objective's sigmas and D(x; sigma)."""

    family = "sigma"

    def __init__(
        self,
        schedule=None,  # the checkpoint's NoiseSchedule (DDPM objective)
        prediction_type: str = "epsilon",
        objective: Objective | None = None,  # what the network output means; default DDPM on `schedule`
        sigmas: str = "default",  # default | karras | exponential
        timestep_spacing: str = "trailing",  # for sigmas=default on a DDPM schedule: which integer timesteps
        rho: float = 7.0,  # the Karras spacing's exponent (eq. 5)
        clip_sample: bool = False,  # clamp pred_x0 to [-clip_range, clip_range] (pixel data)
        clip_range: float = 1.0,
    ):
        check_choice(f"{self.name} sigma spacing (sampler.sigmas)", sigmas, SIGMA_SPACINGS)
        check_choice("timestep spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if not (isinstance(rho, (int, float)) and rho > 0):
            raise UserError(f"sampler.rho must be a number > 0 (Karras et al. use 7), got {rho!r}")
        if objective is None:
            objective = DDPMObjective(schedule, prediction_type)
        if isinstance(objective, DDPMObjective) and objective.schedule.zero_terminal_snr and objective.prediction_type == "epsilon":
            raise UserError("a zero-terminal-SNR schedule needs prediction_type v or x0; epsilon cannot recover x0 at SNR 0")
        self.objective, self.sigma_spacing, self.timestep_spacing, self.rho = objective, sigmas, timestep_spacing, float(rho)
        self.clip_sample, self.clip_range = clip_sample, clip_range

    def levels(self, n: int) -> np.ndarray:
        sigma_min, sigma_max = self.objective.sigma_range()
        spacing = self.sigma_spacing
        if spacing == "default" and not isinstance(self.objective, DDPMObjective):
            spacing = "karras"  # EDM's own grid
        if spacing == "default":
            grid = timestep_grid(self.objective.schedule.num_timesteps, n, self.timestep_spacing)
            return self.objective.sigmas[grid]
        if spacing == "karras":
            return karras_sigmas(sigma_min, sigma_max, n, self.rho)
        return exponential_sigmas(sigma_min, sigma_max, n)

    # the start of sampling and the inpainting re-noise, in the sigma view x = x0 + sigma eps
    def prior(self, noise: torch.Tensor, levels) -> torch.Tensor:
        return noise * self.objective.prior_std(float(levels[0]))

    def img2img_start(self, x0, noise, levels):
        return self.noised(x0, noise, levels[0])

    def noised(self, x0, noise, level):
        return x0 + float(level) * noise

    def implied_noise(self, x, pred_x0, sigma):
        return (x - pred_x0) / sigma

    def denoised(self, denoise, x, sigma):
        """(D(x; sigma), raw network output): the network is called on alpha x at t(sigma)."""
        t, alpha = self.objective.from_sigma(sigma)
        x_t = alpha * x
        output = denoise(self.objective.network_input(x_t, t), self.objective.model_time(t)).to(x.dtype)
        pred_x0 = self.objective.denoise(output, x_t, t)
        if self.clip_sample:
            pred_x0 = pred_x0.clamp(-self.clip_range, self.clip_range)
        return pred_x0, output

    def __repr__(self):
        return f"{type(self).__name__}(objective={self.objective}, sigmas={self.sigma_spacing}, clip_sample={self.clip_sample})"
