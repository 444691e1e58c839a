"""Training objectives, one file each: `ddpm` (epsilon / v / x0 on a discrete schedule), `flow`
(rectified flow), `edm` (EDM preconditioning). `objective_for(cfg, schedule)` builds the one a
training config (or a checkpoint's stored config) names with `diffusion.objective`."""

from __future__ import annotations

from diffusion.errors import UserError, check_choice
from diffusion.objectives.base import Objective
from diffusion.objectives.ddpm import DDPMObjective
from diffusion.objectives.edm import EDMObjective
from diffusion.objectives.flow import FlowObjective

OBJECTIVES = ("ddpm", "flow", "edm")


def objective_for(cfg, schedule) -> Objective:
    """The objective of a training config; configs from before objectives existed are `ddpm`."""
    d = cfg.diffusion
    name = d.get("objective", "ddpm")
    check_choice("diffusion.objective", name, OBJECTIVES)
    if name in ("flow", "edm"):
        options = dict(d.get(name) or {})
        try:
            return (FlowObjective if name == "flow" else EDMObjective)(**options)
        except TypeError as error:  # an unknown key under diffusion.flow / diffusion.edm
            raise UserError(f"diffusion.{name}: {error}".replace("__init__() ", "")) from None
    return DDPMObjective(schedule, d.prediction_type, d.get("loss_weighting", "uniform"), d.get("min_snr_gamma", 5.0))


__all__ = ["OBJECTIVES", "Objective", "DDPMObjective", "EDMObjective", "FlowObjective", "objective_for"]
