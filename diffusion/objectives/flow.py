"""Rectified flow / conditional flow matching (Liu et al. 2022; Lipman et al. 2022; SD3, Esser et al. 2024).

    x_t = (1 - t) x0 + t eps,   t in [0, 1]          (t = 1 is pure noise)
    the network predicts the velocity u = dx_t/dt = eps - x0, trained with a plain squared error.

Training times (SD3 section 3.1): `uniform`, or `logit_normal` t = sigmoid(m + s n), n ~ N(0, 1)
(m = 0, s = 1 by default), which spends the steps on the middle of the path. Both are then moved by
the resolution `shift` (SD3 section 5.3.2): t' = shift t / (1 + (shift - 1) t); shift > 1 puts more
of the budget at high noise, which a larger image (more pixels per unit of signal) needs. The
network's time embedding receives 1000 t, the scale the DDPM timesteps have (as SD3 does).
"""

from __future__ import annotations

import torch

from diffusion.errors import UserError, check_choice
from diffusion.objectives.base import Objective
from diffusion.noise_schedules import expand_like

TIME_SAMPLINGS = ("uniform", "logit_normal")


def shift_time(t, shift: float):
    """SD3's resolution shift of a flow time (works on floats and tensors): t' = s t / (1 + (s - 1) t)."""
    return shift * t / (1 + (shift - 1) * t)


class FlowObjective(Objective):
    name = "flow"
    sampler_families = ("flow",)

    def __init__(self, time_sampling: str = "logit_normal", logit_mean: float = 0.0, logit_std: float = 1.0,
                 shift: float = 1.0, timestep_scale: float = 1000.0):
        check_choice("objective.time_sampling", time_sampling, TIME_SAMPLINGS)
        if not shift > 0:
            raise UserError(f"objective.shift must be > 0 (1 = no shift, SD3 uses 3), got {shift}")
        if not logit_std > 0:
            raise UserError(f"objective.logit_std must be > 0, got {logit_std}")
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, float(logit_mean), float(logit_std)
        self.shift, self.timestep_scale = float(shift), float(timestep_scale)

    # -------- training
    def draw_times(self, n, generator):
        if self.time_sampling == "uniform":
            t = torch.rand(n, generator=generator, dtype=torch.float64)
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator, dtype=torch.float64))
        return shift_time(t, self.shift)

    def noisy(self, x0, noise, t):
        t = expand_like(t, x0)
        return (1 - t) * x0 + t * noise

    def loss(self, model_output, x0, noise, x_t, t):
        target = noise.float() - x0.float()  # the velocity of the straight path from x0 to eps
        return ((model_output.float() - target) ** 2).flatten(1).mean(dim=1)

    # -------- both
    def model_time(self, t):
        return t * self.timestep_scale

    def denoise(self, model_output, x_t, t):
        t = expand_like(torch.as_tensor(t, dtype=torch.float64), x_t)
        return x_t - t * model_output  # x0 = x_t - t u

    def velocity(self, model_output, x_t, t):
        return model_output

    def sigma_of_model_time(self, model_time):
        # x_t = (1 - t) (x0 + t / (1 - t) eps): sigma = t / (1 - t), infinite at t = 1
        t = float(model_time) / self.timestep_scale
        return t / (1 - t) if t < 1 else float("inf")

    def __repr__(self):
        return (f"FlowObjective(time_sampling={self.time_sampling}, logit_mean={self.logit_mean}, "
                f"logit_std={self.logit_std}, shift={self.shift})")
