"""The one sampling loop: start from noise (or a noised init image) and step any sampler down its levels.

    x, levels = start(sampler, noise, steps)                       # text-to-image
    x, levels = start(sampler, noise, steps, init=x0, strength=0.6)  # image-to-image
    x0 = sample_loop(sampler, denoise, x, levels, generators, callback=..., inpaint=...)

It owns what every sampler shares: the progress bar, the per-step callback (`StepInfo`, for opening up
a trajectory), the per-image noise of stochastic samplers and the inpainting re-noise. Randomness is
per image: image i draws its start noise and every step's noise from its own generator, so an image
depends on its seed only, never on which batch it was drawn in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from diffusion.samplers.base import Sampler

Denoise = Callable[[torch.Tensor, object], torch.Tensor]  # (x_t, t) -> raw network output, guidance applied


@dataclass
class StepInfo:
    """What a callback sees after each step."""

    index: int  # 0-based step number
    level: float  # the level the step started from: a timestep (ddim, ddpm), a sigma, or a flow time
    level_next: float  # the level it landed on
    x: torch.Tensor  # the sample the step started from
    model_output: torch.Tensor
    pred_x0: torch.Tensor
    pred_eps: torch.Tensor  # the noise x holds if its clean sample is pred_x0
    prev_sample: torch.Tensor  # x at level_next


def per_image_normal(generators: list[torch.Generator], shape, device, dtype=torch.float32) -> torch.Tensor:
    """One standard normal draw of `shape` per generator, stacked: [len(generators), *shape]."""
    return torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in generators]).to(device)


def start(sampler: Sampler, noise: torch.Tensor, steps: int, init: torch.Tensor | None = None,
          strength: float = 1.0) -> tuple[torch.Tensor, list]:
    """(the first sample, the levels to step through): the prior for text-to-image, or `init` noised to
    the first of the last round(strength * steps) levels for image-to-image."""
    if init is None:
        levels = sampler.levels(steps)
        return sampler.prior(noise, levels), levels
    levels = sampler.img2img_levels(steps, strength)
    return sampler.img2img_start(init, noise, levels), levels


@torch.no_grad()
def sample_loop(
    sampler: Sampler,
    denoise: Denoise,
    x: torch.Tensor,  # [B, C, H, W] the start (see `start`)
    levels: list,  # descending; the loop steps to each next one and finally to sampler.final_level
    generators: list[torch.Generator] | None = None,  # one per image, for the steps' noise (stochastic samplers)
    callback: Callable[[StepInfo], None] | None = None,
    progress: bool = False,
    inpaint: Callable[[torch.Tensor, float], torch.Tensor] | None = None,  # re-imposes the known region at a level
) -> torch.Tensor:
    """Step x down `levels`; returns the clean sample (in the space the model denoises)."""
    pairs = list(zip(levels, sampler.following(levels)))
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc="sampling", unit="step", leave=False)
    memory: dict = {}
    x = x if x.dtype == torch.float64 else x.float()  # float64 is kept (the parity tests run in it)
    for index, (level, level_next) in enumerate(pairs):
        noise = None
        if sampler.stochastic:
            if generators is None:  # a caller without seeds (a test, a notebook): image i draws from seed i
                generators = [torch.Generator().manual_seed(i) for i in range(x.shape[0])]
            noise = per_image_normal(generators, x.shape[1:], x.device)
        out = sampler.step(denoise, x, level, level_next, memory, noise=noise)
        memory = out.memory
        if callback is not None:
            callback(StepInfo(index, level, level_next, x, out.model_output, out.pred_x0,
                              sampler.implied_noise(x, out.pred_x0, level), out.prev_sample))
        x = out.prev_sample
        if inpaint is not None:
            x = inpaint(x, level_next)
    return x
