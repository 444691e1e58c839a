"""What every sampler shares: one shape, a step over a `denoise` callable (k-diffusion's shape).

A sampler walks a descending grid of noise *levels* — integer timesteps for ddim / ddpm, sigmas for
euler / heun / dpmpp_2m, flow times for flow_euler / flow_heun — and each step is

    step(denoise, x, level, level_next, memory, noise) -> SamplerStep(prev_sample, pred_x0, model_output, memory)

where `denoise(x_t, t)` is the (guided) network as a plain function: the sampler never sees a network.
What a network output means comes from the objective the sampler was built on (`denoise` /
`to_x0_eps` / `from_sigma`, diffusion/objectives/); `family` says which objectives a sampler fits,
and each objective lists the families it accepts (`Objective.sampler_families`). The one loop that
drives every sampler — progress bar, step callback, image-to-image start, inpainting — is
`diffusion/samplers/loop.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from diffusion.errors import UserError


@dataclass
class SamplerStep:
    """What one step returns: the next sample, and what the step believed about x0."""

    prev_sample: torch.Tensor  # x at level_next
    pred_x0: torch.Tensor  # the step's estimate of the clean sample
    model_output: torch.Tensor  # the raw network output at (x, level)
    memory: dict = field(default_factory=dict)  # carried to the next step (multistep samplers)


def check_steps(num_steps, minimum: int = 1, name: str = "this sampler", maximum: int | None = None) -> None:
    ok = isinstance(num_steps, (int, np.integer)) and not isinstance(num_steps, bool) and num_steps >= minimum
    if maximum is not None and ok and num_steps > maximum:
        ok = False
    if not ok:
        allowed = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum} for {name}"
        raise UserError(f"steps must be an integer {allowed}, got {num_steps!r}")


def check_strength(strength) -> None:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise UserError(f"strength must be in (0, 1], got {strength!r}")


STRENGTH_ROUNDINGS = ("nearest", "down")


def img2img_steps(num_steps: int, strength: float, rounding: str = "nearest") -> int:
    """How many of `num_steps` steps image-to-image runs at `strength`, at least one: round(strength * n) here
    ("nearest"), int(strength * n) in diffusers' img2img pipelines ("down": StableDiffusionImg2ImgPipeline.
    get_timesteps), so strength 0.7 of 25 steps runs 18 here and 17 there. The two agree when strength * n is whole."""
    check_strength(strength)
    if rounding not in STRENGTH_ROUNDINGS:
        raise UserError(f"strength_rounding must be one of {' | '.join(STRENGTH_ROUNDINGS)}, got {rounding!r}")
    kept = round(strength * num_steps) if rounding == "nearest" else int(strength * num_steps)
    return max(1, min(num_steps, kept))


class Sampler:
    """The grid, the start of sampling and the image-to-image / inpainting hooks; subclasses define
    `level_grid` and `step`."""

    name = "sampler"
    family = "sigma"  # "discrete" (integer timesteps of a DDPM schedule) | "sigma" | "flow"
    min_steps = 1
    final_level = 0.0  # the level after the last step (discrete samplers: -1, "before step 0")
    stochastic = False  # whether `step` consumes `noise` (the loop then draws it per image)
    strength_rounding = "nearest"  # image-to-image's steps from strength (`img2img_steps`); models opened from a
    # diffusers / SD scheduler config set "down", as their pipelines count (LoadedModel.sampler)

    def level_grid(self, num_steps: int) -> np.ndarray:
        raise NotImplementedError

    def levels(self, num_steps: int) -> list:
        """The descending levels each step starts from; the last step goes on to `final_level`."""
        check_steps(num_steps, self.min_steps, self.name)
        return [float(s) for s in self.level_grid(int(num_steps))]

    def following(self, levels: list) -> list:
        """The level each step lands on: the next entry, and `final_level` after the last one."""
        return list(levels[1:]) + [self.final_level]

    def img2img_levels(self, num_steps: int, strength: float) -> list:
        """The tail of the grid that image-to-image runs: the last `img2img_steps(num_steps, strength)` steps
        (at least one). strength 1 runs the whole grid, i.e. starts from (almost) pure noise."""
        kept = img2img_steps(num_steps, strength, self.strength_rounding)
        return self.levels(num_steps)[num_steps - kept:]

    # the start of sampling and the inpainting re-noise; subclasses say what a level means
    def prior(self, noise: torch.Tensor, levels: list) -> torch.Tensor:
        """The start of text-to-image sampling from a standard normal draw."""
        return noise

    def img2img_start(self, x0: torch.Tensor, noise: torch.Tensor, levels: list) -> torch.Tensor:
        """The init image taken to the first remaining level."""
        return self.noised(x0, noise, levels[0])

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, level) -> torch.Tensor:
        """x0 taken to `level` (the final level: x0 itself); inpainting re-imposes the known region with it."""
        raise NotImplementedError

    def implied_noise(self, x: torch.Tensor, pred_x0: torch.Tensor, level) -> torch.Tensor:
        """The noise that x at `level` holds if its clean sample is pred_x0 (for the step callback)."""
        raise NotImplementedError

    def step(self, denoise, x, level, level_next, memory: dict, noise=None) -> SamplerStep:
        raise NotImplementedError

    def clip(self, pred_x0: torch.Tensor) -> torch.Tensor:
        clip_sample = getattr(self, "clip_sample", False)
        return pred_x0.clamp(-self.clip_range, self.clip_range) if clip_sample else pred_x0
