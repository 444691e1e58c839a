"""What every sampler shares: the timestep grid, the parameterisation, and the image-to-image start.

A scheduler is built from a `NoiseSchedule` and is stateless: `timesteps(num_steps)` returns the
descending grid, and each subclass's `step(model_output, t, t_prev, x_t, *, eta, noise)` is a pure
function of its arguments. `t_prev = -1` means the final step to x0 (alpha-bar taken as 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffusion.errors import UserError, check_choice
from diffusion.schedules import PREDICTION_TYPES, NoiseSchedule

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass
class StepOutput:
    prev_sample: torch.Tensor  # x_{t_prev}
    pred_x0: torch.Tensor  # the step's estimate of the clean sample
    pred_eps: torch.Tensor  # the step's estimate of the noise in x_t


def timestep_grid(num_timesteps: int, num_steps: int, spacing: str) -> np.ndarray:
    """The descending integer timesteps a sampler visits (the grids of Lin et al. 2024, Table 2)."""
    check_choice("timestep spacing", spacing, TIMESTEP_SPACINGS)
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= num_timesteps:
        raise UserError(f"steps must be an integer in [1, {num_timesteps}], got {num_steps!r}")
    if spacing == "linspace":  # both ends included: T-1 ... 0
        grid = np.linspace(0, num_timesteps - 1, num_steps).round()
    elif spacing == "leading":  # multiples of T // n starting at 0: never reaches T-1
        grid = np.arange(num_steps) * (num_timesteps // num_steps)
    else:  # trailing: T-1 downwards in steps of T / n; always starts at the last timestep
        grid = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps)) - 1
        return grid.astype(np.int64)
    return grid[::-1].astype(np.int64).copy()


class Scheduler:
    """Common constructor and helpers; subclasses implement `step`. The "discrete" family: integer
    timesteps of a DDPM schedule (the k-diffusion-style solvers are in sigmas.py)."""

    family = "discrete"

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: str = "epsilon",  # what the network outputs: epsilon | v | x0
        timestep_spacing: str = "leading",  # how `timesteps(n)` spreads n steps over [0, T)
        clip_sample: bool = False,  # clamp pred_x0 to [-clip_range, clip_range] (pixel data in [-1, 1])
        clip_range: float = 1.0,
        objective=None,  # accepted for a uniform constructor; DDPM/DDIM read schedule and prediction_type
    ):
        check_choice("prediction type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if schedule.zero_terminal_snr and prediction_type == "epsilon":
            # At SNR 0, x_t is pure noise: an epsilon prediction carries no information about x0.
            raise UserError("a zero-terminal-SNR schedule needs prediction_type v or x0 (Lin et al. 2024, section 3.2); "
                            "epsilon cannot recover x0 at the last timestep")
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.timestep_spacing = timestep_spacing
        self.clip_sample = clip_sample
        self.clip_range = clip_range

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def timesteps(self, num_steps: int) -> list[int]:
        """Descending integer timesteps; the sampler steps from each to the next, then to -1 (x0)."""
        return timestep_grid(self.num_timesteps, num_steps, self.timestep_spacing).tolist()

    def previous_timesteps(self, timesteps: list[int]) -> list[int]:
        """t_prev for each t of a grid: the next entry, and -1 after the last one."""
        return list(timesteps[1:]) + [-1]

    def img2img_timesteps(self, num_steps: int, strength: float) -> list[int]:
        """The tail of the grid that image-to-image runs: the last round(strength * num_steps) steps
        (at least one). strength 1 runs the whole grid, i.e. starts from (almost) pure noise."""
        if not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise UserError(f"strength must be in (0, 1], got {strength!r}")
        grid = self.timesteps(num_steps)
        kept = max(1, min(num_steps, round(strength * num_steps)))
        return grid[num_steps - kept:]

    def img2img_start(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
        """Noise the init image to the first remaining timestep: x_t = q(x_t | x0)."""
        return self.schedule.add_noise(x0, noise, timesteps[0])

    def prior(self, noise: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
        """The start of text-to-image sampling: x_T ~ N(0, I)."""
        return noise

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        """x0 taken to timestep t (t = -1: x0 itself); inpainting re-imposes the known region with it."""
        return self.schedule.add_noise(x0, noise, t)

    def run(self, denoise, timesteps, x, generators, eta=0.0, callback=None, progress=False, inpaint=None):
        from diffusion.sampling import sample_loop

        return sample_loop(denoise, self, timesteps, x, generators, eta=eta, callback=callback, progress=progress,
                           inpaint=inpaint)

    def predict_x0_eps(self, model_output: torch.Tensor, t: int, x_t: torch.Tensor):
        """(pred_x0, pred_eps) for this parameterisation; with clip_sample, pred_x0 is clamped and
        pred_eps recomputed from it so that x_t = sqrt(a) pred_x0 + sqrt(1-a) pred_eps still holds."""
        pred_x0, pred_eps = self.schedule.to_x0_eps(self.prediction_type, model_output, x_t, t)
        if self.clip_sample:
            pred_x0 = pred_x0.clamp(-self.clip_range, self.clip_range)
            a = float(self.schedule.alpha_bar(t))
            if a < 1.0:
                pred_eps = (x_t - a**0.5 * pred_x0) / (1 - a) ** 0.5
        return pred_x0, pred_eps

    def is_stochastic(self, eta) -> bool:
        """Whether `step` consumes `noise` (so the loop must draw it)."""
        return True

    def step(self, model_output, t, t_prev, x_t, *, eta=0.0, noise=None) -> StepOutput:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(schedule={self.schedule.name}, prediction_type={self.prediction_type}, "
                f"timestep_spacing={self.timestep_spacing}, clip_sample={self.clip_sample})")


def alpha_bars(schedule: NoiseSchedule, t: int, t_prev: int) -> tuple[float, float]:
    """(alpha_bar_t, alpha_bar_t_prev) as Python floats (float64); t_prev = -1 gives 1."""
    t, t_prev = int(t), int(t_prev)
    if not 0 <= t < schedule.num_timesteps or not -1 <= t_prev < t:
        raise UserError(f"need 0 <= t < {schedule.num_timesteps} and -1 <= t_prev < t, got t={t}, t_prev={t_prev}")
    return float(schedule.alpha_bar(t)), float(schedule.alpha_bar(t_prev))
