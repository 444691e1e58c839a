"""Guidance in a limited interval of noise levels (Kynkäänniemi et al. 2024, "Applying guidance in a limited
interval improves sample and distribution quality in diffusion models"):

    D(x; sigma) = D_uncond + w (D_cond - D_uncond)   if sigma_low < sigma <= sigma_high
                  D_cond                              otherwise (one conditional forward, no unconditional pass)

Guidance at high noise pushes every sample of a prompt to the same layout (less variety) and at low noise
does little; the middle band carries its benefit. The interval is given in the objective's sigma view
(x = x0 + sigma eps, diffusion/objectives/base.py), so one interval means the same noise level for every
objective and sampler; the denoiser reads sigma back from the time the network receives with
`objective.sigma_of_model_time`.
"""

from __future__ import annotations

import math

import torch

from diffusion.conditioning import Cond
from diffusion.errors import UserError
from diffusion.guidance.cfg import Denoiser, classifier_free_guidance, conditional


def check_interval(sigma_low, sigma_high, objective) -> None:
    for name, value in (("sigma_low", sigma_low), ("sigma_high", sigma_high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            raise UserError(f"guidance.{name} must be a number >= 0 (a noise level sigma), got {value!r}")
    if not sigma_low < sigma_high:
        raise UserError(f"guidance interval needs sigma_low < sigma_high, got sigma_low={sigma_low}, sigma_high={sigma_high}")
    try:
        sigma_min, sigma_max = objective.sigma_range()
    except NotImplementedError:  # rectified flow: sigma runs over [0, inf)
        return
    if sigma_high <= sigma_min or sigma_low >= sigma_max:
        raise UserError(f"guidance interval ({sigma_low}, {sigma_high}] lies outside this model's noise levels "
                        f"[{sigma_min:.4g}, {sigma_max:.4g}]: guidance would never apply; choose sigmas inside it")


def scalar_time(t) -> float:
    """The one model time of a call (samplers step the whole batch at one level)."""
    return float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)


def guidance_interval(model, cond: Cond, uncond: Cond, scale: float, guided_channels: int | None = None, *,
                      objective,  # maps the network's time back to sigma
                      sigma_low: float = 0.28,  # guide where sigma_low < sigma <= sigma_high
                      sigma_high: float = 5.42) -> Denoiser:
    check_interval(sigma_low, sigma_high, objective)
    guided = classifier_free_guidance(model, cond, uncond, scale, guided_channels)
    plain = conditional(model, cond)

    def denoise(x_t: torch.Tensor, t) -> torch.Tensor:
        sigma = objective.sigma_of_model_time(scalar_time(t))
        return guided(x_t, t) if sigma_low < sigma <= sigma_high else plain(x_t, t)

    return denoise
