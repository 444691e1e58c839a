"""Classifier-free guidance (Ho & Salimans 2021) as a wrapper around a denoiser.

    output = uncond + scale * (cond - uncond)

Both halves come from one batched forward pass over [x; x] with [uncond; cond]. The combination is
applied to the raw model output: because pred_x0 and pred_eps are affine in the output for a fixed
x_t, guiding epsilon, v or x0 outputs gives the same pred_x0 and pred_eps.

The other methods in this folder reuse `both_halves` (the batched pass) and `keep_variance`.
"""

from __future__ import annotations

from typing import Callable

import torch

from diffusion.conditioning import Cond

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> model output


def conditional(model, cond: Cond) -> Denoiser:
    return lambda x_t, t: model(x_t, t, cond)


def both_halves(model, cond: Cond, uncond: Cond) -> Callable[[torch.Tensor, object], tuple[torch.Tensor, torch.Tensor]]:
    """(x_t, t) -> (out_uncond, out_cond), from one forward pass over [x_t; x_t] with [uncond; cond]."""
    both = Cond.cat([uncond, cond])

    def halves(x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        # a Python timestep is filled in on the device (as_tensor would copy it from the host: a sync per step)
        t = torch.full((), t, device=x_t.device) if isinstance(t, (int, float)) else torch.as_tensor(t, device=x_t.device)
        t = t.expand(x_t.shape[0])
        out_uncond, out_cond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), both).chunk(2)
        return out_uncond, out_cond

    return halves


def keep_variance(guided: torch.Tensor, out_cond: torch.Tensor, guided_channels: int | None) -> torch.Tensor:
    """The guided first channels, the rest (a learned variance) from the conditional pass."""
    if guided_channels is None:
        return guided
    return torch.cat([guided[:, :guided_channels], out_cond[:, guided_channels:]], dim=1)


def classifier_free_guidance(model, cond: Cond, uncond: Cond, scale: float, guided_channels: int | None = None) -> Denoiser:
    """scale 1 is the plain conditional model (one pass); scale 0 the unconditional one. `guided_channels`: only
    the first channels are guided and the rest come from the conditional pass (a learned-variance network's
    variance half, as GLIDE and DiT do: guiding it would push it out of its [-1, 1] range)."""
    if scale == 1.0:
        return conditional(model, cond)
    if scale == 0.0:
        return conditional(model, uncond)
    halves = both_halves(model, cond, uncond)

    def denoise(x_t: torch.Tensor, t) -> torch.Tensor:
        out_uncond, out_cond = halves(x_t, t)
        guided = out_uncond + scale * (out_cond - out_uncond)
        return keep_variance(guided, out_cond, guided_channels)

    return denoise
