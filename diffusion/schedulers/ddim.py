"""DDIM (Song et al. 2021): a non-Markovian sampler; eta = 0 is deterministic, eta = 1 is DDPM-like."""

from __future__ import annotations

import torch

from diffusion.errors import UserError
from diffusion.schedulers.base import Scheduler, StepOutput, alpha_bars


class DDIMScheduler(Scheduler):
    name = "ddim"

    def is_stochastic(self, eta) -> bool:
        return bool(eta)

    def step(self, model_output, t, t_prev, x_t, *, eta=0.0, noise=None) -> StepOutput:
        if not 0.0 <= eta:
            raise UserError(f"eta must be >= 0, got {eta}")
        a_t, a_prev = alpha_bars(self.schedule, t, t_prev)

        # 1. the clean sample and the noise this x_t implies (DDIM eq. 9, and its v / x0 forms)
        pred_x0, pred_eps = self.predict_x0_eps(model_output, t, x_t)

        # 2. sigma_t (DDIM eq. 16): eta scales the DDPM posterior standard deviation
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5 if a_t < 1 else 0.0

        # 3. x_{t_prev} = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z  (DDIM eq. 12)
        direction = max(1 - a_prev - sigma**2, 0.0) ** 0.5 * pred_eps
        prev_sample = a_prev**0.5 * pred_x0 + direction
        if sigma > 0:
            if noise is None:
                noise = torch.randn_like(x_t)
            prev_sample = prev_sample + sigma * noise
        return StepOutput(prev_sample=prev_sample, pred_x0=pred_x0, pred_eps=pred_eps)
