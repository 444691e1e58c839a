"""The samplers that step the integer timesteps of a DDPM schedule (ddim, ddpm): the grid, and the
network output read as (pred_x0, pred_eps) through the DDPM objective.

`t_prev = -1` is the final step to x0 (alpha-bar taken as 1).
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion.errors import UserError, check_choice
from diffusion.samplers.base import Sampler, check_steps

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def timestep_grid(num_timesteps: int, num_steps: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """The descending integer timesteps a sampler visits (the grids of Lin et al. 2024, Table 2).
    `steps_offset` shifts the leading grid up (Stable Diffusion's scheduler config: 1, so 25 steps visit
    961, 921, ..., 1); the other spacings ignore it, as diffusers' schedulers do."""
    check_choice("timestep spacing", spacing, TIMESTEP_SPACINGS)
    check_steps(num_steps, 1, maximum=num_timesteps)
    if spacing == "linspace":  # both ends included: T-1 ... 0
        grid = np.linspace(0, num_timesteps - 1, num_steps).round()
    elif spacing == "leading":  # multiples of T // n starting at 0 (+ the offset): never reaches T-1 unoffset
        grid = np.arange(num_steps) * (num_timesteps // num_steps) + steps_offset
        if grid[-1] >= num_timesteps:
            raise UserError(f"steps={num_steps} with steps_offset={steps_offset} would start at t={grid[-1]}, past "
                            f"the schedule's last timestep {num_timesteps - 1}: use fewer steps")
    else:  # trailing: T-1 downwards in steps of T / n; always starts at the last timestep
        grid = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps)) - 1
        return grid.astype(np.int64)
    return grid[::-1].astype(np.int64).copy()


class TimestepSampler(Sampler):
    """Base of ddim and ddpm: integer timesteps of the objective's schedule, pred_x0 / pred_eps from its
    parameterisation (epsilon | v | x0), optionally clamped to [-clip_range, clip_range]."""

    family = "discrete"
    final_level = -1

    def __init__(
        self,
        objective,  # a DDPMObjective: the schedule and what the network outputs
        timestep_spacing: str = "leading",  # how `levels(n)` spreads n steps over [0, T)
        clip_sample: bool = False,  # clamp pred_x0 to [-clip_range, clip_range] (pixel data in [-1, 1])
        clip_range: float = 1.0,
        steps_offset: int = 0,  # added to the leading grid (Stable Diffusion's scheduler config says 1)
    ):
        check_choice("timestep spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
            raise UserError(f"steps_offset must be an integer >= 0, got {steps_offset!r}")
        self.steps_offset = steps_offset
        if getattr(objective, "schedule", None) is None or not hasattr(objective, "to_x0_eps"):
            raise UserError(f"{self.name} steps the timesteps of a DDPM schedule; this model's objective is "
                            f"{getattr(objective, 'name', objective)}")
        self.objective = objective
        self.schedule = objective.schedule
        self.timestep_spacing, self.clip_sample, self.clip_range = timestep_spacing, clip_sample, clip_range

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def levels(self, num_steps: int) -> list[int]:
        """Descending integer timesteps; the sampler steps from each to the next, then to -1 (x0)."""
        return timestep_grid(self.num_timesteps, num_steps, self.timestep_spacing, self.steps_offset).tolist()

    def noised(self, x0, noise, t):
        """q(x_t | x0) (Ho et al. 2020, eq. 4); t = -1 gives x0."""
        return self.schedule.add_noise(x0, noise, int(t))

    def implied_noise(self, x, pred_x0, t):
        return self.objective.eps_from_x0(x, pred_x0, int(t))

    def predict(self, denoise, x_t, t):
        """(pred_x0, pred_eps, model_output) at integer t; with clip_sample, pred_x0 is clamped and pred_eps
        recomputed from it so that x_t = sqrt(a) pred_x0 + sqrt(1-a) pred_eps still holds."""
        output = denoise(x_t, t).to(x_t.dtype)
        pred_x0, pred_eps = self.objective.to_x0_eps(output, x_t, int(t))
        if self.clip_sample:
            pred_x0 = self.clip(pred_x0)
            pred_eps = self.objective.eps_from_x0(x_t, pred_x0, int(t))
        return pred_x0, pred_eps, output

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(schedule={self.schedule.name}, prediction_type={self.objective.prediction_type}, "
                f"timestep_spacing={self.timestep_spacing}, clip_sample={self.clip_sample})")


def alpha_bars(schedule, t: int, t_prev: int) -> tuple[float, float]:
    """(alpha_bar_t, alpha_bar_t_prev) as Python floats (float64); t_prev = -1 gives 1."""
    t, t_prev = int(t), int(t_prev)
    if not 0 <= t < schedule.num_timesteps or not -1 <= t_prev < t:
        raise UserError(f"need 0 <= t < {schedule.num_timesteps} and -1 <= t_prev < t, got t={t}, t_prev={t_prev}")
    return float(schedule.alpha_bar(t)), float(schedule.alpha_bar(t_prev))


def noise_or_draw(noise, like: torch.Tensor) -> torch.Tensor:
    return torch.randn_like(like) if noise is None else noise.to(like)
