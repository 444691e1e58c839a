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
    "models.text_encoder.TextEncoder",
    "models.minilm.MiniLMEncoder",
    "models.vae.AutoencoderKL",
    "models.critic.PatchCritic",
    "diffusion.schedulers.DDIMScheduler",
    "diffusion.schedulers.DDPMScheduler",
    "diffusion.schedulers.ddim.DDIMScheduler",
    "diffusion.schedulers.ddpm.DDPMScheduler",
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


def build_scheduler(sampler_cfg, schedule, prediction_type: str, bounded: bool = True):
    """A sampler from its config node; `steps` and `eta` are the loop's, not the scheduler's.
    `bounded=False` (latent space: no [-1, 1] range) turns `clip_sample` off whatever the config says."""
    extra = {} if bounded else {"clip_sample": False}
    return build(sampler_cfg, exclude=("steps", "eta"), where="sampler", schedule=schedule,
                 prediction_type=prediction_type, **extra)
