"""Swap an objective's network for the exact one: `exact_network(mixture, objective)(x_in, time, cond)`.

A network here is called like every denoiser in the framework, on what the objective hands it:
x_in = objective.network_input(x_t, t) and time = objective.model_time(t). The exact network undoes those two
maps to recover (x_t, t), writes x_t in the sigma view x_t = alpha (x0 + sigma eps), takes the exact posterior
mean pred_x0 = D(x_t / alpha; sigma) (mixture.py), and returns the raw output whose `objective.denoise` is
that pred_x0. So any solver, guidance wrapper or evaluation runs on it unchanged, and whatever error remains
is the solver's own. Per objective:

  ddpm  x_t = sqrt(a) x0 + sqrt(1 - a) eps   alpha = sqrt(a), sigma = sqrt((1 - a) / a)     (Karras 2022, Table 1 "VP")
        epsilon = (x_t - sqrt(a) pred_x0) / sqrt(1 - a);  v = (sqrt(a) x_t - pred_x0) / sqrt(1 - a)  (Salimans & Ho 2022)
  edm   x = x0 + sigma eps, x_in = c_in x, time = noise_scale ln(sigma) / 4                 (Karras 2022, Table 1)
        F = (pred_x0 - c_skip x) / c_out
  flow  x_t = (1 - t) x0 + t eps, time = timestep_scale t  alpha = 1 - t, sigma = t / (1 - t)
        u = eps - x0 = (x_t - pred_x0) / t                                                  (Liu et al. 2022)

At the pure-noise end (a = 0, t = 1: alpha = 0, sigma = inf) pred_x0 is the limit E[x0].
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from diffusion.errors import UserError
from diffusion.objectives import DDPMObjective, EDMObjective, FlowObjective
from diffusion.objectives.ddpm import MIN_ALPHA_BAR  # where a zero-terminal-SNR schedule reaches 0 (for interpolation)
from diffusion.testbed.mixture import GaussianMixture, denoiser

Network = Callable[..., torch.Tensor]  # (x_in [B, d], time, cond=None) -> raw output [B, d]


def class_labels_of(cond) -> torch.Tensor | None:
    """The [B] class labels in a Cond-like record, a dict, or a tensor; None means unconditional."""
    if cond is None or isinstance(cond, torch.Tensor):
        return cond
    return cond.get("class_labels") if isinstance(cond, dict) else getattr(cond, "class_labels", None)


def ddpm_alpha_bar(alphas_cumprod: torch.Tensor, t) -> torch.Tensor:
    """alpha-bar at integer or fractional timesteps t (float or [B]): the table at integers; in between, log sigma
    linear in t (k-diffusion / diffusers `_sigma_to_t`), sigma = sqrt((1 - a) / a), a = 1 / (1 + sigma^2)."""
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).cpu()
    a = alphas_cumprod.to(torch.float64).cpu()
    log_sigmas = 0.5 * torch.log((1 - a) / torch.where(a > 0, a, MIN_ALPHA_BAR))  # only a zero-terminal-SNR end
    sigma = torch.from_numpy(np.exp(np.interp(t.numpy(), np.arange(len(a)), log_sigmas.numpy())))
    on_grid = t == t.round()
    return torch.where(on_grid, a[t.round().long().clamp(0, len(a) - 1)], 1.0 / (1.0 + sigma**2))


def sigma_view_denoiser(mixture: GaussianMixture, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                        class_labels=None) -> torch.Tensor:
    """pred_x0 for x_t = alpha (x0 + sigma eps), alpha and sigma [B]; alpha = 0 (sigma = inf) gives E[x0]."""
    x = torch.where(alpha[:, None] > 0, x_t / alpha.clamp(min=torch.finfo(torch.float64).tiny)[:, None], 0.0)
    return denoiser(mixture, x, sigma, class_labels)


def _ddpm_output(mixture, objective: DDPMObjective, x_in, time, labels):
    # 1. network_input and model_time are identities: x_in = x_t, time = t
    x_t = x_in
    a = ddpm_alpha_bar(objective.schedule.alphas_cumprod, time).expand(x_t.shape[0]).to(x_t.device)
    sqrt_a, sqrt_1m_a = a.sqrt()[:, None], (1 - a).sqrt()[:, None]
    # 2. the exact x0-estimate in the sigma view
    pred_x0 = sigma_view_denoiser(mixture, x_t, a.sqrt(), ((1 - a) / a).sqrt(), labels)
    # 3. as the output the objective expects
    if objective.prediction_type == "x0":
        return pred_x0
    if objective.prediction_type == "epsilon":
        return (x_t - sqrt_a * pred_x0) / sqrt_1m_a
    return (sqrt_a * x_t - pred_x0) / sqrt_1m_a  # v, since pred_x0 = sqrt(a) x_t - sqrt(1 - a) v


def _edm_output(mixture, objective: EDMObjective, x_in, time, labels):
    # 1. time = noise_scale c_noise(sigma) = noise_scale ln(sigma) / 4; x_in = c_in(sigma) x
    sigma = torch.exp(4 * torch.as_tensor(time, dtype=torch.float64) / objective.noise_scale)
    sigma = sigma.reshape(-1).expand(x_in.shape[0]).to(x_in.device)
    x = x_in / objective.c_in(sigma)[:, None]
    # 2. the exact D(x; sigma)
    pred_x0 = denoiser(mixture, x, sigma, labels)
    # 3. D = c_skip x + c_out F  =>  F = (D - c_skip x) / c_out
    return (pred_x0 - objective.c_skip(sigma)[:, None] * x) / objective.c_out(sigma)[:, None]


def _flow_output(mixture, objective: FlowObjective, x_in, time, labels):
    # 1. network_input is the identity; time = timestep_scale t
    x_t = x_in
    t = (torch.as_tensor(time, dtype=torch.float64) / objective.timestep_scale).reshape(-1).expand(x_t.shape[0])
    t = t.to(x_t.device)
    # 2. x_t = (1 - t) (x0 + t / (1 - t) eps)
    pred_x0 = sigma_view_denoiser(mixture, x_t, 1 - t, t / (1 - t), labels)
    # 3. x0 = x_t - t u  =>  u = (x_t - x0) / t; at t = 0 x0 = x_t whatever u is, so u = 0 there
    return torch.where(t[:, None] > 0, (x_t - pred_x0) / t.clamp(min=torch.finfo(torch.float64).tiny)[:, None], 0.0)


OUTPUTS = ((DDPMObjective, _ddpm_output), (EDMObjective, _edm_output), (FlowObjective, _flow_output))


def exact_network(mixture: GaussianMixture, objective) -> Network:
    """The network whose raw output `objective.denoise` turns into the exact D of `mixture`, for the ddpm (every
    prediction type), edm and flow objectives. Computed in float64, returned in the input's dtype."""
    output = next((fn for kind, fn in OUTPUTS if isinstance(objective, kind)), None)
    if output is None:
        raise UserError(f"exact_network knows the ddpm, edm and flow objectives, not {type(objective).__name__}")

    def network(x_in: torch.Tensor, time, cond=None) -> torch.Tensor:
        if x_in.ndim != 2 or x_in.shape[1] != mixture.dim:
            raise UserError(f"the exact network takes [B, {mixture.dim}] inputs, got {tuple(x_in.shape)}")
        labels = class_labels_of(cond)
        return output(mixture, objective, x_in.to(torch.float64), time, labels).to(x_in.dtype)

    return network
