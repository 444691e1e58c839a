"""Training objectives, one file each: `ddpm` (epsilon / v / x0 on a discrete schedule), `flow`
(rectified flow), `edm` (EDM preconditioning), `meanflow` (MeanFlow / iMF: one-step average velocity). Chosen with the `objective` config group
(`python train.py objective=flow`); `diffusion.config.objective_for(cfg)` builds the one a training
config (or a checkpoint's stored config) names."""

from diffusion.objectives.base import Objective
from diffusion.objectives.ddpm import DDPMObjective
from diffusion.objectives.edm import EDMObjective
from diffusion.objectives.flow import FlowObjective
from diffusion.objectives.meanflow import MeanFlowObjective

OBJECTIVES = {cls.name: cls for cls in (DDPMObjective, FlowObjective, EDMObjective, MeanFlowObjective)}

__all__ = ["OBJECTIVES", "Objective", "DDPMObjective", "EDMObjective", "FlowObjective", "MeanFlowObjective"]
