"""DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", the second-order multistep solver of the reverse
SDE in data prediction): diffusers' `DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++",
solver_order=2)`, midpoint form. One network call a step; fresh noise every step.

In the sigma view, with lambda = -log sigma and h_i = lambda_{i+1} - lambda_i:

    1. D_i = D(x_i; sigma_i)
    2. first step: D'_i = D_i; otherwise, with r_i = h_{i-1} / h_i,
          D'_i = D_i + (D_i - D_{i-1}) / (2 r_i)                 (the 2M midpoint extrapolation)
    3. x_{i+1} = e^{-2h} x_i + (1 - e^{-2h}) D'_i + sigma_{i+1} sqrt(1 - e^{-2h}) z,   z ~ N(0, I)

(diffusers writes step 3 for the variance-preserving x_t = x / sqrt(1 + sigma^2); divided by its alpha_t it
is the line above, since sigma_{i+1}/sigma_i = e^{-h}). The last step, to sigma = 0 (h = inf), lands on
D_i and uses no noise, as diffusers' first-order final step with `final_sigmas_type="zero"`.
"""

from __future__ import annotations

import math

from diffusion.samplers.base import SamplerStep
from diffusion.samplers.sigmas import SigmaSampler


class DPMPP2MSDESampler(SigmaSampler):
    name = "dpmpp_2m_sde"
    stochastic = True

    def step(self, denoise, x, sigma, sigma_next, memory, noise=None):
        if noise is None:
            raise ValueError("dpmpp_2m_sde takes fresh noise every step: pass noise= (sample_loop does)")
        pred_x0, output = self.denoised(denoise, x, sigma)  # 1
        if sigma_next == 0:  # the last step
            return SamplerStep(pred_x0, pred_x0, output)
        h = math.log(sigma) - math.log(sigma_next)
        data = pred_x0
        if "pred_x0" in memory:  # 2
            r = memory["h"] / h
            data = pred_x0 + (pred_x0 - memory["pred_x0"]) / (2 * r)
        decay = -math.expm1(-2 * h)  # 1 - e^{-2h}, the share of x_i replaced by data and noise
        prev_sample = math.exp(-2 * h) * x + decay * data + sigma_next * math.sqrt(decay) * noise.to(x.dtype)  # 3
        return SamplerStep(prev_sample, pred_x0, output, memory={"pred_x0": pred_x0, "h": h})
