"""Adaptive projected guidance, APG (Sadat et al. 2024, "Eliminating oversaturation and artifacts of high
guidance scales in diffusion models", Algorithm 1; equation
numbers are not cited here: we could not check them against the paper):

    Delta D_t   = D_cond - D_uncond                                   (the CFG update)
    Delta D_t  <- Delta D_t + beta Delta D_{t+1}                      (reverse momentum; beta < 0)
    Delta D_t  <- Delta D_t * min(1, r / ||Delta D_t||)              (norm threshold r)
    Delta D_par = (<Delta D_t, D_cond> / ||D_cond||^2) D_cond,  Delta D_orth = Delta D_t - Delta D_par
    D_guided    = D_cond + (w - 1) (Delta D_orth + eta Delta D_par)

The parallel part mostly raises the saturation; the orthogonal part carries the quality gain, so eta < 1
(the paper: 0) keeps guidance from over-saturating at large w. With eta = 1, r = inf and beta = 0 this is
CFG: D_cond + (w - 1)(D_cond - D_uncond) = D_uncond + w (D_cond - D_uncond). Norms and inner products are
per example over all its channels and pixels, in float64.

What is projected: the raw network output (epsilon, v, x0, a flow velocity or EDM's F), not the paper's
denoised x0 = D(x; sigma). The guided denoiser sees only the network's input and time, and the same choice
is what diffusers' `AdaptiveProjectedGuidance` guider makes (it projects the pipeline's noise prediction),
which is how this file is proven (tests/guidance). For an x0-predicting network it is exactly the paper's
rule; for epsilon / v the directions differ from x0-space APG (x0 = a x_t + b out is affine, not linear,
in the output), and r is in the output's units. The momentum is kept per generation inside the closure.
"""

from __future__ import annotations

import math

import torch

from diffusion.conditioning import Cond
from diffusion.errors import UserError
from diffusion.guidance.cfg import Denoiser, both_halves, conditional, keep_variance


def check_apg(eta, r, beta) -> None:
    def number(value):
        return not isinstance(value, bool) and isinstance(value, (int, float)) and not math.isnan(value)

    if not (number(eta) and eta >= 0):
        raise UserError(f"guidance.eta must be a number >= 0 (the weight of the parallel part; the paper uses 0), got {eta!r}")
    if not (r is None or (number(r) and r > 0)):
        raise UserError(f"guidance.r must be a number > 0 (the update's norm threshold) or null for none, got {r!r}")
    if not (number(beta) and -1 < beta < 1):
        raise UserError(f"guidance.beta must be a number in (-1, 1) (momentum; the paper uses a negative one), got {beta!r}")


def project(v0: torch.Tensor, v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(parallel, orthogonal) parts of v0 with respect to v1, per example."""
    dims = list(range(1, v0.ndim))
    v0_64, v1_64 = v0.double(), torch.nn.functional.normalize(v1.double(), dim=dims)
    parallel = (v0_64 * v1_64).sum(dim=dims, keepdim=True) * v1_64
    return parallel.to(v0.dtype), (v0_64 - parallel).to(v0.dtype)


def apg_update(delta: torch.Tensor, d_cond: torch.Tensor, eta: float, r: float | None) -> torch.Tensor:
    """The thresholded and projected update from an already momentum-averaged delta."""
    if r is not None and not math.isinf(r):
        norm = delta.norm(p=2, dim=list(range(1, delta.ndim)), keepdim=True)
        delta = delta * torch.clamp(r / norm, max=1.0)
    parallel, orthogonal = project(delta, d_cond)
    return orthogonal + eta * parallel


def adaptive_projected_guidance(model, cond: Cond, uncond: Cond, scale: float, guided_channels: int | None = None, *,
                                eta: float = 0.0,  # weight of the update's part parallel to D_cond (1 = CFG)
                                r: float | None = 15.0,  # norm threshold of the update; null: none
                                beta: float = -0.5) -> Denoiser:  # momentum over steps (0 = none)
    check_apg(eta, r, beta)
    if scale == 1.0:
        return conditional(model, cond)  # (w - 1) = 0: the conditional prediction alone
    halves = both_halves(model, cond, uncond)
    channels = slice(None, guided_channels)
    average = [0.0]  # the running Delta D, per generation: a new closure per generate_images call

    def denoise(x_t: torch.Tensor, t) -> torch.Tensor:
        d_uncond, d_cond_all = halves(x_t, t)
        d_cond = d_cond_all[:, channels]
        average[0] = (d_cond - d_uncond[:, channels]) + beta * average[0]  # momentum
        guided = d_cond + (scale - 1) * apg_update(average[0], d_cond, eta, r)
        return keep_variance(guided, d_cond_all, guided_channels)

    return denoise
