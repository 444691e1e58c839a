"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself", eq. 2):

    D_w(x; sigma, c) = D_0(x; sigma, c) + w (D_1(x; sigma, c) - D_0(x; sigma, c))

D_1 is the main model and D_0 the guide: a smaller or less trained model of the same data, objective and
conditioning, both conditional (classifier-free guidance is the special case where D_0 is the unconditional
model). The guide's errors are a weaker copy of the main model's own, so the difference D_1 - D_0 points away
from where both go wrong (too broad, off the data's ridges) without also pushing every sample away from the
other classes, which is what CFG's D_c - D_u does: the paper finds better FID at equal guidance, with variety kept.

Combined on the raw network outputs, as CFG is: both networks are read by the same objective (`load_guide`
checks it), so pred_x0 and pred_eps are the same affine map of each, and guiding the outputs guides D.
The guide is given here already conditioned (`guide(x_t, t)`): it encodes the prompts with its own text
encoder (diffusion/pipeline.py does that), since the two models need not share one.

w = 1 is the main model alone (one pass), w = 0 the guide alone. Each step costs one pass of each network,
so autoguidance has CFG's two network calls per step, and the guide's is the cheaper one.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from diffusion.conditioning import Cond
from diffusion.errors import UserError
from diffusion.guidance.cfg import Denoiser, conditional, keep_variance


def autoguidance(model, cond: Cond, uncond: Cond, scale: float, guided_channels: int | None = None, *,
                 guide: Callable | None = None) -> Denoiser:  # the guide, conditioned: (x_t, t) -> its raw output
    """`uncond` is not used: both halves are conditional."""
    if guide is None or not callable(guide):
        raise UserError("guidance=auto needs a guide model: give guide_ckpt=<a smaller or earlier checkpoint of the "
                        "same data and objective>")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or math.isnan(scale):
        raise UserError(f"the autoguidance strength must be a number, got {scale!r}")
    main = conditional(model, cond)
    if scale == 1.0:
        return main  # w = 1: D_1 alone
    if scale == 0.0:
        return guide  # w = 0: D_0 alone
    channels = slice(None, guided_channels)

    def denoise(x_t: torch.Tensor, t) -> torch.Tensor:
        out_main, out_guide = main(x_t, t), guide(x_t, t)
        guided = torch.lerp(out_guide[:, channels], out_main[:, channels], scale)  # D_0 + w (D_1 - D_0), eq. 2
        return keep_variance(guided, out_main, guided_channels)

    return denoise
