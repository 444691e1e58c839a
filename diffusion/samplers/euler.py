"""Euler (Karras et al. 2022, Algorithm 2 with no churn, S_churn = 0): one network call a step.

    1. D_i = D(x_i; sigma_i)                      the denoised estimate
    2. d_i = (x_i - D_i) / sigma_i                the ODE's slope dx/dsigma (eq. 3)
    3. x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i

With pred_x0 held fixed this is exactly a DDIM step (Song et al. 2021, eq. 13), written in sigma.
"""

from __future__ import annotations

from diffusion.samplers.base import SamplerStep
from diffusion.samplers.sigmas import SigmaSampler


class EulerSampler(SigmaSampler):
    name = "euler"

    def step(self, denoise, x, sigma, sigma_next, memory, noise=None):
        pred_x0, output = self.denoised(denoise, x, sigma)  # 1
        slope = (x - pred_x0) / sigma  # 2
        return SamplerStep(x + (sigma_next - sigma) * slope, pred_x0, output)  # 3
