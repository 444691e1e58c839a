"""Building objects from config nodes without trusting the config.

Networks, samplers and datasets are built with Hydra's `instantiate` from `_target_` paths. A
config may come from a checkpoint file, which is data: so every `_target_` is checked against
`ALLOWED_TARGETS` before anything is imported, and a file can only ever build this project's own
classes, never call an arbitrary function.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion.errors import UserError

# Every class a config may name. A checkpoint is data: anything else is refused before it is imported.
ALLOWED_TARGETS = frozenset({
    "models.unet.UNet",
    "models.dit.DiT",
    "models.mmdit.MMDiT",
    "models.text_encoder.TextEncoder",
    "models.minilm.MiniLMEncoder",
    "models.vae.AutoencoderKL",
    "models.critic.PatchCritic",
    "diffusion.schedulers.DDIMScheduler",
    "diffusion.schedulers.DDPMScheduler",
    "diffusion.schedulers.ddim.DDIMScheduler",
    "diffusion.schedulers.ddpm.DDPMScheduler",
    "diffusion.schedulers.EulerSolver",
    "diffusion.schedulers.HeunSolver",
    "diffusion.schedulers.DPMSolverPlusPlus2M",
    "diffusion.schedulers.FlowEulerSampler",
    "diffusion.schedulers.FlowHeunSampler",
    "diffusion.data.toybirds.ToyBirds",
    "diffusion.data.birds.CUBBirds",
    "diffusion.data.imagefolder.ImageFolder",
    "diffusion.data.torchvision_sets.TorchvisionDataset",
})


def check_targets(node, where: str = "config") -> None:
    """Refuse any `_target_` (at any depth) that is not one of this project's own classes."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and target not in ALLOWED_TARGETS:
            raise UserError(f"{where} names _target_ {target!r}, which is not one of this project's classes; refusing to build it")
        for key, value in node.items():
            check_targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for value in node:
            check_targets(value, where)


def build(node, exclude: tuple = (), where: str = "config", **fill):
    """`instantiate` a config node after checking its targets; `exclude` drops keys that are not
    constructor arguments, `fill` supplies the values that follow from the data."""
    container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    check_targets(container, where)
    for key in exclude:
        container.pop(key, None)
    # objects in `fill` are passed to the constructor as they are (instantiate would turn a dataclass
    # such as NoiseSchedule into a config), so the config is instantiated as a partial first
    constructor = instantiate(container, _partial_=True, _convert_="all")
    try:
        return constructor(**fill)
    except UserError:
        raise
    except ValueError as error:  # a constructor refusing a configured value: the user's to fix, one line
        raise UserError(f"{where}: {error}") from None


def build_scheduler(sampler_cfg, schedule, prediction_type: str, bounded: bool = True, objective=None):
    """A sampler from its config node; `steps` and `eta` are the loop's, not the scheduler's.
    `bounded=False` (latent space: no [-1, 1] range) turns `clip_sample` off whatever the config says.
    `objective` (default: DDPM with `prediction_type` on `schedule`) tells the solver what the network's
    output means; a sampler of a family the objective does not fit is refused in one line."""
    from diffusion.objectives import DDPMObjective
    from diffusion.schedulers import SAMPLER_FAMILIES

    if objective is None:
        objective = DDPMObjective(schedule, prediction_type)
    extra = {} if bounded or "clip_sample" not in sampler_cfg else {"clip_sample": False}
    scheduler = build(sampler_cfg, exclude=("steps", "eta"), where="sampler", schedule=schedule,
                      prediction_type=prediction_type, objective=objective, **extra)
    if scheduler.family not in objective.sampler_families:
        fitting = [name for family in objective.sampler_families for name in SAMPLER_FAMILIES[family]]
        raise UserError(f"sampler {sampler_name(scheduler)} does not fit this model's objective "
                        f"({objective.name}); use sampler={' | '.join(fitting)}")
    return scheduler


def sampler_name(scheduler) -> str:
    """The name a user types for a built sampler (sampler=<name>)."""
    return getattr(scheduler, "name", None) or {"DDIMScheduler": "ddim", "DDPMScheduler": "ddpm"}.get(
        type(scheduler).__name__, type(scheduler).__name__)
