"""Building objects from config nodes without trusting the config.

Networks, samplers and datasets are built with Hydra's `instantiate` from `_target_` paths. A
config may come from a checkpoint file, which is data: so every `_target_` is checked against
`ALLOWED_TARGETS` before anything is imported, and a file can only ever build this project's own
classes, never call an arbitrary function.
"""

from __future__ import annotations

import inspect

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion.errors import UserError, check_choice

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the Hydra config groups train.py and sample.py compose

# Every class a config may name. A checkpoint is data: anything else is refused before it is imported.
ALLOWED_TARGETS = frozenset({
    "models.unet.UNet",
    "models.dit.DiT",
    "models.mmdit.MMDiT",
    "models.text_encoder.TextEncoder",
    "models.minilm.MiniLMEncoder",
    "models.clip_text.CLIPTextEncoder",
    "models.vae.AutoencoderKL",
    "models.critic.PatchCritic",
    "diffusion.objectives.DDPMObjective",
    "diffusion.objectives.FlowObjective",
    "diffusion.objectives.EDMObjective",
    "diffusion.objectives.MeanFlowObjective",
    "diffusion.samplers.DDIMSampler",
    "diffusion.samplers.DDPMSampler",
    "diffusion.samplers.EulerSampler",
    "diffusion.samplers.HeunSampler",
    "diffusion.samplers.DPMPP2MSampler",
    "diffusion.samplers.DPMPP2MSDESampler",
    "diffusion.samplers.UniPCSampler",
    "diffusion.samplers.FlowEulerSampler",
    "diffusion.samplers.FlowHeunSampler",
    "diffusion.samplers.ConsistencySampler",
    "diffusion.samplers.MeanFlowSampler",
    "diffusion.data.toybirds.ToyBirds",
    "diffusion.data.birds.CUBBirds",
    "diffusion.data.imagefolder.ImageFolder",
    "diffusion.data.torchvision_sets.TorchvisionDataset",
})

# What checkpoints written before the redesign name (diffusion.schedulers.*): read as today's classes.
RENAMED_TARGETS = {
    "diffusion.schedulers.DDIMScheduler": "diffusion.samplers.DDIMSampler",
    "diffusion.schedulers.ddim.DDIMScheduler": "diffusion.samplers.DDIMSampler",
    "diffusion.schedulers.DDPMScheduler": "diffusion.samplers.DDPMSampler",
    "diffusion.schedulers.ddpm.DDPMScheduler": "diffusion.samplers.DDPMSampler",
    "diffusion.schedulers.EulerSolver": "diffusion.samplers.EulerSampler",
    "diffusion.schedulers.HeunSolver": "diffusion.samplers.HeunSampler",
    "diffusion.schedulers.DPMSolverPlusPlus2M": "diffusion.samplers.DPMPP2MSampler",
    "diffusion.schedulers.FlowEulerSampler": "diffusion.samplers.FlowEulerSampler",
    "diffusion.schedulers.FlowHeunSampler": "diffusion.samplers.FlowHeunSampler",
}


def check_targets(node, where: str = "config") -> None:
    """Refuse any `_target_` (at any depth) that is not one of this project's own classes."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        target = RENAMED_TARGETS.get(node.get("_target_"), node.get("_target_"))
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
    container = renamed(container)
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


def renamed(node):
    """`node` with every renamed `_target_` (RENAMED_TARGETS) replaced by today's name, at any depth."""
    if isinstance(node, dict):
        node = {key: renamed(value) for key, value in node.items()}
        if node.get("_target_") in RENAMED_TARGETS:
            node["_target_"] = RENAMED_TARGETS[node["_target_"]]
    elif isinstance(node, list):
        node = [renamed(value) for value in node]
    return node


def target_class(node, where: str = "config"):
    """The class a config node's `_target_` names, after the same check as `build` (for class-level
    helpers such as a text encoder's vocabulary builder, without importing a network by name)."""
    from hydra.utils import get_class

    container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    check_targets(container, where)
    return get_class(renamed(container)["_target_"])


def stored_config(payload: dict, path) -> DictConfig:
    """The training config a checkpoint stores, checked: it may only name this project's classes."""
    try:
        config = OmegaConf.create(payload["config"])
    except Exception:
        raise UserError(f"{path}: the config stored in the checkpoint cannot be read") from None
    if not isinstance(config, DictConfig) or any(key not in config for key in ("model", "schedule", "sampler")):
        raise UserError(f"{path}: the config stored in the checkpoint is damaged (it must hold model, schedule, sampler)")
    check_targets(config, where=f"{path} config")
    return config


# ---------------------------------------------------------------------------------------------- objective and sampler


def objective_node(cfg) -> dict:
    """The `objective` config node (the config group), or, for a config written before the objective was a
    group (a checkpoint's stored config), the same node rebuilt from its `diffusion.objective` string."""
    node = cfg.get("objective")
    if node is not None and not isinstance(node, str):
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    d = cfg.diffusion
    name = node or d.get("objective", "ddpm")
    check_choice("objective", name, ("ddpm", "flow", "edm"))
    if name == "ddpm":
        return {"_target_": "diffusion.objectives.DDPMObjective", "prediction_type": d.get("prediction_type", "epsilon"),
                "loss_weighting": d.get("loss_weighting", "uniform"), "min_snr_gamma": d.get("min_snr_gamma", 5.0)}
    options = OmegaConf.to_container(d[name], resolve=True) if d.get(name) is not None else {}
    return {"_target_": f"diffusion.objectives.{'FlowObjective' if name == 'flow' else 'EDMObjective'}", **options}


def objective_for(cfg):
    """The objective a training config (or a checkpoint's stored config) names; a DDPM objective is built on
    the config's `schedule`."""
    from diffusion.noise_schedules import NoiseSchedule

    node = objective_node(cfg)
    fill = {"schedule": NoiseSchedule.from_name(**cfg.schedule)} if target_class(node, "objective").needs_schedule else {}
    return build(node, exclude=("sampler",), where="objective", **fill)


def build_sampler(sampler_cfg, objective, bounded: bool = True, eta=None):
    """A sampler from its config node on `objective`; `steps` is the loop's, not the sampler's.
    `bounded=False` (latent space: no [-1, 1] range) turns `clip_sample` off whatever the config says.
    `eta` (sample.py's key) overrides the config's, for the samplers that have one (ddim). A sampler whose
    family the objective does not accept is refused in one line."""
    from diffusion.samplers import samplers_fitting

    node = OmegaConf.to_container(sampler_cfg, resolve=True) if isinstance(sampler_cfg, DictConfig) else dict(sampler_cfg)
    sampler_class = target_class(node, "sampler")
    if sampler_class.family is not None and sampler_class.family not in objective.sampler_families:
        raise UserError(f"sampler {sampler_class.name} does not fit this model's objective ({objective.name}); "
                        f"use sampler={' | '.join(samplers_fitting(objective))}")
    if "eta" in node and "eta" not in inspect.signature(sampler_class).parameters:
        if node.pop("eta"):  # configs written before the redesign carry `eta: null` for ddpm
            raise UserError(f"sampler.eta applies to ddim only; {sampler_class.name} has no eta")
    if not bounded and "clip_sample" in node:
        node["clip_sample"] = False
    if eta is not None:
        if "eta" in node:
            node["eta"] = eta
        elif eta != 0:
            raise UserError(f"eta={eta} applies to ddim only; {sampler_class.name} has no eta (use sampler=ddim, or eta=0)")
    return build(node, exclude=("steps",), where="sampler", objective=objective)


def is_consistency_student(config) -> bool:
    """Whether a checkpoint's stored config is a consistency student's (python train.py task=distill)."""
    return config.get("task") == "distill"


STUDENT_KEYS = ("solver", "grid_points", "sigma_data")  # part of the student's function, fixed by its distillation


def sampler_node_for(config, sampler_cfg=None) -> dict:
    """The sampler node to build for a checkpoint trained with `config`: its own, or `sampler_cfg`. A consistency
    student is sampled only by the consistency sampler, with the solver, grid and boundary it was distilled with;
    no other checkpoint is sampled by it."""
    stored = OmegaConf.to_container(config.sampler, resolve=True)
    if sampler_cfg is None:
        return stored
    node = OmegaConf.to_container(sampler_cfg, resolve=True) if isinstance(sampler_cfg, DictConfig) else dict(sampler_cfg)
    wants_consistency = target_class(node, "sampler").name == "consistency"
    if not is_consistency_student(config):
        if wants_consistency:
            raise UserError(f"sampler=consistency samples consistency students (python train.py task=distill "
                            f"teacher=<ckpt>); this checkpoint was trained with task={config.get('task', 'diffusion')}: "
                            f"use its own sampler or another one (ddim, dpmpp_2m, unipc, ...)")
        return node
    if not wants_consistency:
        raise UserError(f"this checkpoint is a consistency student (distilled from {config.get('teacher')}); other "
                        f"samplers would read it as a plain denoiser: sample it with sampler=consistency (or no sampler=)")
    for key in STUDENT_KEYS:
        if node.get(key) is not None and node[key] != stored.get(key):
            raise UserError(f"sampler.{key}={node[key]!r}: the student was distilled with {stored.get(key)!r}, which is "
                            f"part of its function; drop sampler.{key}")
    return {**stored, **{key: value for key, value in node.items() if key not in STUDENT_KEYS}}
