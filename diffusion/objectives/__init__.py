"""Training objectives, one file each: `ddpm` (epsilon / v / x0 on a discrete schedule), `flow`
(rectified flow), `edm` (EDM preconditioning). Chosen with the `objective` config group
(`python train.py objective=flow`); `diffusion.config.objective_for(cfg)` builds the one a training
config (or a checkpoint's stored config) names."""

from diffusion.objectives.base import Objective
from diffusion.objectives.ddpm import DDPMObjective
from diffusion.objectives.edm import EDMObjective
from diffusion.objectives.flow import FlowObjective

OBJECTIVES = {cls.name: cls for cls in (DDPMObjective, FlowObjective, EDMObjective)}

__all__ = ["OBJECTIVES", "Objective", "DDPMObjective", "EDMObjective", "FlowObjective"]
