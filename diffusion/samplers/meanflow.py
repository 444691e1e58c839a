"""The MeanFlow sampler (Geng et al. 2025, Algorithm 2): jump along the network's average velocity.

    z_r = z_t - (t - r) u(z_t, r, t)          (MF eq. 3; one network call a step)

`steps=1` is the one-step model: z_0 = z_1 - u(z_1, 0, 1) from pure noise. More steps split [0, 1] evenly
(t = 1, (n-1)/n, ..., 1/n, then 0); 2 steps is MF's 2-NFE result. The guidance scale is not a mix of two passes
but an input the network was trained with (iMF, objectives/meanflow.py): `denoise` is built with it.

Only MeanFlow models fit (family "meanflow"): the network must be told r, which no other objective trains.
"""

from __future__ import annotations

import numpy as np

from diffusion.errors import UserError
from diffusion.samplers.base import Sampler, SamplerStep


class MeanFlowSampler(Sampler):
    family = "meanflow"
    name = "meanflow"

    def __init__(self, objective):
        if "meanflow" not in objective.sampler_families:
            raise UserError(f"sampler {self.name} samples MeanFlow models, not {objective.name}")
        self.objective = objective

    def level_grid(self, n):
        return np.linspace(1.0, 0.0, n + 1)[:-1]  # the last step lands on final_level 0

    def noised(self, x0, noise, t):
        return (1 - float(t)) * x0 + float(t) * noise  # the flow path; t = 1 is the noise itself

    def implied_noise(self, x, pred_x0, t):
        return (x - (1 - t) * pred_x0) / t

    def step(self, denoise, x, t, r, memory, noise=None):
        u = denoise(x, self.objective.model_time(t), r=self.objective.model_time(r)).to(x.dtype)  # u(z_t, r, t)
        pred_x0 = x - t * u  # exact only when r = 0 (one step); an extrapolation of the jump otherwise
        return SamplerStep(x - (t - r) * u, pred_x0, u)

    def __repr__(self):
        return "MeanFlowSampler()"
