"""Guidance as a conditioning input (iMF, Geng et al. 2025-12, section 5): a MeanFlow network was trained on the
classifier-free-guided field at a scale w it is told, so guiding it is one call with w as an input, not a mix of a
conditional and an unconditional pass. The denoiser also passes on the second time r the MeanFlow sampler gives."""

from __future__ import annotations

from dataclasses import replace

import torch

from diffusion.conditioning import Cond


def guidance_as_input(model, cond: Cond, scale: float, objective) -> callable:
    """(x_t, t, r) -> u(x_t, r, t | prompt, w = scale); the scale is checked against the trained range first."""
    objective.check_guidance_scale(scale)

    def denoise(x_t: torch.Tensor, t, r) -> torch.Tensor:
        per_image = lambda value: torch.full((x_t.shape[0],), float(value), device=x_t.device)  # noqa: E731
        return model(x_t, per_image(t), replace(cond, r=per_image(r), guidance=per_image(scale)))

    return denoise
