"""Samplers, one file each. The discrete family (ddpm, ddim) steps integer timesteps with
`step(model_output, t, t_prev, x_t, *, eta, noise)`; the sigma family (euler, heun, dpm_solver) and
the flow family (flow_euler) step noise levels (sigmas.py). All share the pipeline's interface:
`timesteps(n)`, `img2img_timesteps(n, strength)`, `prior`, `img2img_start`, `noised`, `run`."""

from diffusion.schedulers.base import Scheduler, StepOutput, timestep_grid
from diffusion.schedulers.ddim import DDIMScheduler
from diffusion.schedulers.ddpm import DDPMScheduler
from diffusion.schedulers.dpm_solver import DPMSolverPlusPlus2M
from diffusion.schedulers.euler import EulerSolver
from diffusion.schedulers.flow_euler import FlowEulerSampler, FlowHeunSampler
from diffusion.schedulers.heun import HeunSolver
from diffusion.schedulers.sigmas import SIGMA_SPACINGS, LevelSampler, SigmaSolver, karras_sigmas

# the sampler names a user types (sampler=<name>), by family: which objectives each fits
SAMPLER_FAMILIES = {"discrete": ("ddim", "ddpm"), "sigma": ("euler", "heun", "dpmpp_2m"),
                    "flow": ("flow_euler", "flow_heun")}

__all__ = ["Scheduler", "StepOutput", "timestep_grid", "DDIMScheduler", "DDPMScheduler", "EulerSolver", "HeunSolver",
           "DPMSolverPlusPlus2M", "FlowEulerSampler", "FlowHeunSampler", "LevelSampler", "SigmaSolver",
           "SIGMA_SPACINGS", "SAMPLER_FAMILIES", "karras_sigmas"]
