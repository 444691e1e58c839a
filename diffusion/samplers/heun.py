"""Heun's 2nd-order method (Karras et al. 2022, Algorithm 1 with no churn): the EDM sampler.

    1. d_i = (x_i - D(x_i; sigma_i)) / sigma_i                     slope at sigma_i
    2. x'  = x_i + (sigma_{i+1} - sigma_i) d_i                     an Euler step
    3. if sigma_{i+1} = 0: x_{i+1} = x'                            (the last step stays first order)
       else: d' = (x' - D(x'; sigma_{i+1})) / sigma_{i+1}          slope at the far end
             x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (d_i + d') / 2   trapezoidal correction

Two network calls per step except the last: n steps cost 2n - 1 evaluations (NFE).
"""

from __future__ import annotations

from diffusion.samplers.base import SamplerStep
from diffusion.samplers.sigmas import SigmaSampler


class HeunSampler(SigmaSampler):
    name = "heun"
    min_steps = 2  # with one step Heun is only the final Euler step

    def step(self, denoise, x, sigma, sigma_next, memory, noise=None):
        pred_x0, output = self.denoised(denoise, x, sigma)
        slope = (x - pred_x0) / sigma  # 1
        x_euler = x + (sigma_next - sigma) * slope  # 2
        if sigma_next == 0:  # 3
            return SamplerStep(x_euler, pred_x0, output)
        pred_x0_next, _ = self.denoised(denoise, x_euler, sigma_next)
        slope_next = (x_euler - pred_x0_next) / sigma_next
        return SamplerStep(x + (sigma_next - sigma) * (slope + slope_next) / 2, pred_x0, output)
