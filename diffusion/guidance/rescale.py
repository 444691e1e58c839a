"""CFG rescale (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", section 3.4):

    x_cfg      = x_neg + w (x_pos - x_neg)                      (classifier-free guidance)
    x_rescaled = x_cfg * std(x_pos) / std(x_cfg)                (eq. 15-16)
    x_final    = phi x_rescaled + (1 - phi) x_cfg               (eq. 15-16, phi)

A large w inflates the prediction's standard deviation (over-exposed, over-saturated images, worst with a
zero-terminal-SNR schedule); the rescale brings it back to the conditional prediction's, and phi mixes some of
plain CFG back in so the image does not turn flat. std is per example over all its channels and pixels.
Applied to the raw network output, as diffusers' `rescale_noise_cfg` is (the paper's models predict v).
"""

from __future__ import annotations

import math

import torch

from diffusion.conditioning import Cond
from diffusion.errors import UserError
from diffusion.guidance.cfg import Denoiser, both_halves, conditional, keep_variance


def rescale(x_cfg: torch.Tensor, x_pos: torch.Tensor, phi: float) -> torch.Tensor:
    """Eq. 15-16 on [B, ...] tensors."""
    dims = list(range(1, x_cfg.ndim))
    x_rescaled = x_cfg * (x_pos.std(dim=dims, keepdim=True) / x_cfg.std(dim=dims, keepdim=True))  # eq. 15-16
    return phi * x_rescaled + (1 - phi) * x_cfg  # eq. 15-16, phi


def cfg_rescale(model, cond: Cond, uncond: Cond, scale: float, guided_channels: int | None = None, *,
                phi: float = 0.7) -> Denoiser:  # the paper's 0.7; 0 is plain CFG
    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or math.isnan(phi) or not 0 <= phi <= 1:
        raise UserError(f"guidance.phi must be a number in [0, 1] (0 = plain CFG, Lin et al. use 0.7), got {phi!r}")
    if scale == 1.0:
        return conditional(model, cond)  # x_cfg = x_pos: nothing to rescale
    halves = both_halves(model, cond, uncond)
    channels = slice(None, guided_channels)

    def denoise(x_t: torch.Tensor, t) -> torch.Tensor:
        x_neg, x_pos = halves(x_t, t)
        x_neg, x_pos_guided = x_neg[:, channels], x_pos[:, channels]
        x_cfg = x_neg + scale * (x_pos_guided - x_neg)
        return keep_variance(rescale(x_cfg, x_pos_guided, phi), x_pos, guided_channels)

    return denoise
