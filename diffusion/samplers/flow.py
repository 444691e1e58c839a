"""Samplers for rectified-flow models: Euler and Heun on the flow time t in [0, 1] (SD3; diffusers'
FlowMatchEulerDiscreteScheduler and FlowMatchHeunDiscreteScheduler).

    dx/dt = u(x, t)            the network's velocity (eps - x0 on the straight path)
    euler: x_{i+1} = x_i + (t_{i+1} - t_i) u(x_i, t_i)
    heun:  x' = euler step; x_{i+1} = x_i + (t_{i+1} - t_i) (u(x_i, t_i) + u(x', t_{i+1})) / 2
           (the last step, to t = 0, stays Euler: 2n - 1 network calls)

The grid: n times linear from 1 to t_min = 1/1000, then SD3's `shift` t' = s t / (1 + (s - 1) t),
then t = 0. `shift: null` uses the shift the model was trained with.
"""

from __future__ import annotations

import numpy as np

from diffusion.errors import UserError
from diffusion.objectives.flow import shift_time
from diffusion.samplers.base import Sampler, SamplerStep


class FlowEulerSampler(Sampler):
    family = "flow"
    name = "flow_euler"
    heun = False

    def __init__(self, objective, shift: float | None = None, t_min: float = 1e-3):
        if "flow" not in objective.sampler_families:
            raise UserError(f"{self.name} samples rectified-flow models, not {objective.name}")
        self.objective = objective
        shift = getattr(objective, "shift", 1.0) if shift is None else shift
        if isinstance(shift, bool) or not (isinstance(shift, (int, float)) and shift > 0):
            raise UserError(f"sampler.shift must be a number > 0 (or null: the model's), got {shift!r}")
        if isinstance(t_min, bool) or not isinstance(t_min, (int, float)) or not 0 < t_min < 1:
            raise UserError(f"sampler.t_min must be in (0, 1), got {t_min!r}")
        self.shift, self.t_min = float(shift), float(t_min)

    def level_grid(self, n):
        return shift_time(np.linspace(1.0, self.t_min, n), self.shift)

    def noised(self, x0, noise, t):
        return (1 - float(t)) * x0 + float(t) * noise  # t = 1 is pure noise: the prior is the draw itself

    def implied_noise(self, x, pred_x0, t):
        return (x - (1 - t) * pred_x0) / t

    def velocity(self, denoise, x, t):
        output = denoise(self.objective.network_input(x, t), self.objective.model_time(t)).to(x.dtype)
        return self.objective.velocity(output, x, t), output

    def step(self, denoise, x, t, t_next, memory, noise=None):
        u, output = self.velocity(denoise, x, t)
        pred_x0 = x - t * u
        x_next = x + (t_next - t) * u
        if self.heun and t_next > 0:
            u_next, _ = self.velocity(denoise, x_next, t_next)
            x_next = x + (t_next - t) * (u + u_next) / 2
        return SamplerStep(x_next, pred_x0, output)

    def __repr__(self):
        return f"{type(self).__name__}(shift={self.shift}, t_min={self.t_min})"


class FlowHeunSampler(FlowEulerSampler):
    name = "flow_heun"
    heun = True
    min_steps = 2
