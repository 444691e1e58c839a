"""Samplers: one file each, the same `step(model_output, t, t_prev, x_t, *, eta, noise)` shape."""

from diffusion.schedulers.base import Scheduler, StepOutput, timestep_grid
from diffusion.schedulers.ddim import DDIMScheduler
from diffusion.schedulers.ddpm import DDPMScheduler

__all__ = ["Scheduler", "StepOutput", "timestep_grid", "DDIMScheduler", "DDPMScheduler"]
