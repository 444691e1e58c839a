"""The sampling loop: start from noise (or a noised init image), step a scheduler down its timesteps.

Randomness is per image: image i draws its start noise and every step's noise from its own
generator, so an image depends on its seed only, never on which batch it was drawn in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from diffusion.guidance import Denoiser
from diffusion.schedulers import Scheduler


@dataclass
class StepInfo:
    """What a callback sees after each step (for opening up the trajectory)."""

    index: int  # 0-based step number
    t: int
    t_prev: int
    x_t: torch.Tensor  # the sample the step started from
    model_output: torch.Tensor
    pred_x0: torch.Tensor
    pred_eps: torch.Tensor
    prev_sample: torch.Tensor  # x_{t_prev}


def per_image_normal(generators: list[torch.Generator], shape, device, dtype=torch.float32) -> torch.Tensor:
    """One standard normal draw of `shape` per generator, stacked: [len(generators), *shape]."""
    return torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in generators]).to(device)


@torch.no_grad()
def sample_loop(
    denoise: Denoiser,  # (x_t, t) -> model output (guidance already applied)
    scheduler: Scheduler,
    timesteps: list[int],  # descending; the loop steps to each next one and finally to x0 (-1)
    x: torch.Tensor,  # [B, C, H, W] the start: noise, or the noised init image
    generators: list[torch.Generator],  # one per image, for the steps' noise
    eta: float = 0.0,
    callback: Callable[[StepInfo], None] | None = None,
    progress: bool = False,
    inpaint: Callable[[torch.Tensor, int], torch.Tensor] | None = None,  # re-imposes the known region at t_prev
) -> torch.Tensor:
    previous = scheduler.previous_timesteps(timesteps)
    stochastic = scheduler.is_stochastic(eta)
    steps = zip(timesteps, previous)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(list(steps), desc="sampling", unit="step", leave=False)
    for index, (t, t_prev) in enumerate(steps):
        model_output = denoise(x, t).float()
        noise = per_image_normal(generators, x.shape[1:], x.device) if stochastic else None
        out = scheduler.step(model_output, t, t_prev, x.float(), eta=eta, noise=noise)
        if callback is not None:
            callback(StepInfo(index, t, t_prev, x, model_output, out.pred_x0, out.pred_eps, out.prev_sample))
        x = out.prev_sample
        if inpaint is not None:
            x = inpaint(x, t_prev)
    return x
