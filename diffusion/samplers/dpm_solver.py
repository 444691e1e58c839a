"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): multistep, one network call a step.

In the sigma view, with lambda = -log sigma (half the log-SNR) and h_i = lambda_{i+1} - lambda_i:

    1. D_i = D(x_i; sigma_i)
    2. first step, and the last step to sigma = 0:   x_{i+1} = (sigma_{i+1}/sigma_i) x_i - (e^{-h_i} - 1) D_i
    3. otherwise, with r_i = h_{i-1} / h_i, the data estimate extrapolated to the step's midpoint
          D'_i = (1 + 1/(2 r_i)) D_i - 1/(2 r_i) D_{i-1}
          x_{i+1} = (sigma_{i+1}/sigma_i) x_i - (e^{-h_i} - 1) D'_i

(step 2 at sigma = 0 lands on D_i exactly; diffusers' `final_sigmas_type="zero"` does the same).
"""

from __future__ import annotations

import math

from diffusion.samplers.base import SamplerStep
from diffusion.samplers.sigmas import SigmaSampler


class DPMPP2MSampler(SigmaSampler):
    name = "dpmpp_2m"

    def step(self, denoise, x, sigma, sigma_next, memory, noise=None):
        pred_x0, output = self.denoised(denoise, x, sigma)  # 1
        if sigma_next == 0:  # 2, the last step
            return SamplerStep(pred_x0, pred_x0, output)
        h = math.log(sigma) - math.log(sigma_next)
        data = pred_x0
        if "pred_x0" in memory:  # 3
            r = memory["h"] / h
            data = (1 + 1 / (2 * r)) * pred_x0 - (1 / (2 * r)) * memory["pred_x0"]
        prev_sample = (sigma_next / sigma) * x - math.expm1(-h) * data
        return SamplerStep(prev_sample, pred_x0, output, memory={"pred_x0": pred_x0, "h": h})
