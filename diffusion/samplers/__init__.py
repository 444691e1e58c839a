"""Samplers, one file each, all of one shape: `step(denoise, x, level, level_next, memory, noise)` over a
descending grid of levels, driven by the one loop in `loop.py`. A sampler's `family` says which
objectives it fits: "discrete" (ddim, ddpm: integer timesteps of a DDPM schedule), "sigma" (euler, heun,
dpmpp_2m, dpmpp_2m_sde, unipc: any objective with a sigma view), "flow" (flow_euler, flow_heun: rectified
flow) and "meanflow" (meanflow: MeanFlow's average-velocity jumps); `consistency` samples consistency students on the
family of the solver they were distilled with."""

from diffusion.samplers.base import Sampler, SamplerStep
from diffusion.samplers.consistency import ConsistencySampler
from diffusion.samplers.ddim import DDIMSampler
from diffusion.samplers.ddpm import DDPMSampler
from diffusion.samplers.dpm_solver import DPMPP2MSampler
from diffusion.samplers.dpm_solver_sde import DPMPP2MSDESampler
from diffusion.samplers.euler import EulerSampler
from diffusion.samplers.flow import FlowEulerSampler, FlowHeunSampler
from diffusion.samplers.heun import HeunSampler
from diffusion.samplers.loop import StepInfo, per_image_normal, sample_loop, start
from diffusion.samplers.meanflow import MeanFlowSampler
from diffusion.samplers.sigmas import SIGMA_SPACINGS, SigmaSampler, karras_sigmas
from diffusion.samplers.timesteps import TIMESTEP_SPACINGS, TimestepSampler, timestep_grid
from diffusion.samplers.unipc import UniPCSampler

# the sampler a user names (sampler=<name>): the name is the class's own `name`
SAMPLERS = {cls.name: cls for cls in (DDIMSampler, DDPMSampler, EulerSampler, HeunSampler, DPMPP2MSampler,
                                      DPMPP2MSDESampler, UniPCSampler, FlowEulerSampler, FlowHeunSampler,
                                      ConsistencySampler, MeanFlowSampler)}


def samplers_fitting(objective) -> list[str]:
    """The names of the samplers whose family the objective accepts."""
    return [name for name, cls in SAMPLERS.items() if cls.family in objective.sampler_families]


__all__ = ["Sampler", "SamplerStep", "ConsistencySampler", "DDIMSampler", "DDPMSampler", "EulerSampler", "HeunSampler", "DPMPP2MSampler",
           "DPMPP2MSDESampler", "UniPCSampler", "FlowEulerSampler", "FlowHeunSampler", "MeanFlowSampler", "SigmaSampler", "TimestepSampler", "StepInfo", "per_image_normal",
           "sample_loop", "start", "SAMPLERS", "samplers_fitting", "SIGMA_SPACINGS", "TIMESTEP_SPACINGS",
           "karras_sigmas", "timestep_grid"]
