"""Published weights opened as a `LoadedModel`, the object `sample.py`, the evaluation and notebooks sample from.

    diffusers model folder    config.json + diffusion_pytorch_model.safetensors (or .bin): UNet2DModel, DiT
    diffusers pipeline folder model_index.json + unet/ or transformer/ (+ scheduler/, vae/)
    facebookresearch/DiT      DiT-XL-2-256x256.pt (a state dict)
    autoencoders (vae_ckpt=)  a diffusers AutoencoderKL folder, or the LDM / SD single file (.safetensors / .ckpt)

What a file holds is recognised from its keys and configs, never from its name. `.safetensors` is read with the
safetensors package, everything else only through `torch.load(weights_only=True)`. The key tables are the other
files of this package; here the published network is built from its `_target_` config, given the noise schedule
its scheduler config names (the published defaults where there is none), and wrapped with the space it denoises.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from omegaconf import OmegaConf

from diffusion.config import CONF_DIR, build
from diffusion.errors import UserError
from diffusion.model import DiffusionModel, LoadedModel
from diffusion.pretrained import diffusers_dit, diffusers_unet, diffusers_vae, dit_original, ldm_vae
from diffusion.spaces import PixelSpace
from diffusion.spaces.autoencoder import weights_fingerprint
from diffusion.spaces.latents import LatentSpace

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
KNOWN = ("this project's checkpoint (.ckpt) or export (.safetensors)", "a diffusers model or pipeline folder",
         "facebookresearch/DiT's .pt", "an LDM / SD autoencoder (as vae_ckpt)")
# diffusers' beta_schedule -> ours; its prediction_type -> ours
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v", "sample": "x0"}
# Ho et al. 2020 and DiT (Peebles & Xie 2023) both train on 1000 linear betas from 1e-4 to 0.02
PUBLISHED_SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                       "prediction_type": "epsilon"}
SD_SCALE_FACTOR = 0.18215  # Rombach et al.'s latent scale for the kl-f8 autoencoder (SD 1.x / 2.x, DiT)


# ---------------------------------------------------------------------------------------------- reading files


def read_weights(path: Path) -> dict:
    """A state dict from `.safetensors` (the safetensors package) or any other file (torch.load weights_only)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise UserError(f"cannot read {path} as safetensors ({str(error)[:120]}); the file is damaged") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = (str(error).strip().splitlines() or ["unsafe content"])[0][:160]
        raise UserError(f"refusing to load {path}: it holds pickled objects that weights_only refuses ({first}); "
                        f"use the .safetensors file of the same weights") from None
    except Exception as error:  # noqa: BLE001 (any other parse failure: a damaged or foreign file)
        raise UserError(f"cannot read {path}: the file is damaged or not a weights file ({type(error).__name__})") from None
    for key in ("ema", "model", "state_dict"):  # training checkpoints wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict) and not any(
                isinstance(v, torch.Tensor) for v in state.values()):
            return state[key]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path} ({type(error).__name__}): a diffusers folder needs a valid JSON file there") from None


def folder_weights(folder: Path) -> dict:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return read_weights(folder / name)
    raise UserError(f"{folder} has a config.json but no {' or '.join(WEIGHT_FILES)}")


def first_keys(state: dict, count: int = 5) -> str:
    return ", ".join(list(state)[:count]) or "(none)"


# ---------------------------------------------------------------------------------------------- recognising


def is_dit_original(state: dict) -> bool:
    return "x_embedder.proj.weight" in state and "final_layer.linear.weight" in state


def is_ldm_autoencoder(state: dict) -> bool:
    return any(key.startswith(("encoder.down.", "first_stage_model.encoder.")) for key in state)


def open_published(path, device, vae_ckpt=None, state: dict | None = None) -> LoadedModel:
    """The published model at `path` (a folder or a file that is not this project's checkpoint); `state`: the
    file's tensors when the caller has read them already."""
    path = Path(path)
    if path.is_dir():
        return open_folder(path, device, vae_ckpt)
    state = read_weights(path) if state is None else state
    if is_dit_original(state):
        kwargs = dit_original.network_config(state)
        grid = dit_original.image_grid(state) or 16  # DiT-XL-2-256: a 16 x 16 patch grid of 32 x 32 latents
        return assemble(kwargs, dit_original.to_ours(state), PUBLISHED_SCHEDULER, device, vae_ckpt, None,
                        latent_side=grid * kwargs["patch_size"], source={"format": "facebookresearch/DiT", "path": str(path)})
    if is_ldm_autoencoder(state):
        raise UserError(f"{path} is an autoencoder (LDM / SD layout), not a denoiser: give it as vae_ckpt=... beside a "
                        f"latent model's ckpt=...")
    raise UserError(f"{path}: its keys fit none of the known formats ({'; '.join(KNOWN)}); its first keys: "
                    f"{first_keys(state)}")


def open_folder(folder: Path, device, vae_ckpt=None) -> LoadedModel:
    """A diffusers model folder, or a pipeline folder (its denoiser, scheduler and autoencoder)."""
    scheduler_file, vae_folder = folder / "scheduler_config.json", None
    if (folder / "model_index.json").is_file():
        index = read_json(folder / "model_index.json")
        part = next((name for name in ("unet", "transformer") if name in index and (folder / name).is_dir()), None)
        if part is None:
            raise UserError(f"{folder} is a diffusers pipeline ({index.get('_class_name')}) without a unet/ or "
                            f"transformer/ folder")
        scheduler_file = folder / "scheduler" / "scheduler_config.json"
        vae_folder = folder / "vae" if (folder / "vae" / "config.json").is_file() else None
        folder = folder / part
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is neither a diffusers model folder (config.json + {WEIGHT_FILES[0]}) nor a pipeline "
                        f"folder (model_index.json); give one of those, or a weights file")
    config = read_json(folder / "config.json")
    scheduler = {**PUBLISHED_SCHEDULER, **(read_json(scheduler_file) if scheduler_file.is_file() else {})}
    kind = config.get("_class_name")
    source = {"format": f"diffusers {kind}", "path": str(folder)}
    if kind == "UNet2DModel":
        kwargs = diffusers_unet.network_config(config)
        return assemble(kwargs, diffusers_unet.to_ours(folder_weights(folder)), scheduler, device, vae_ckpt, vae_folder,
                        latent_side=int(config.get("sample_size", 32)), source=source)
    if kind in ("DiTTransformer2DModel", "Transformer2DModel"):
        kwargs = diffusers_dit.network_config(config)
        return assemble(kwargs, diffusers_dit.to_ours(folder_weights(folder)), scheduler, device, vae_ckpt, vae_folder,
                        latent_side=int(config.get("sample_size", 32)), source=source)
    if kind == "AutoencoderKL":
        raise UserError(f"{folder} is an autoencoder, not a denoiser: give it as vae_ckpt=... beside a latent model's ckpt")
    raise UserError(f"{folder}: diffusers class {kind!r} is none of the supported denoisers (UNet2DModel, "
                    f"DiTTransformer2DModel)")


# ---------------------------------------------------------------------------------------------- building


def schedule_and_objective(scheduler: dict, learned_variance: bool) -> tuple[dict, dict]:
    """Our `schedule` and `objective` config nodes from a diffusers scheduler config."""
    name = BETA_SCHEDULES.get(scheduler.get("beta_schedule"))
    prediction = PREDICTIONS.get(scheduler.get("prediction_type"))
    if name is None or prediction is None:
        raise UserError(f"scheduler config beta_schedule={scheduler.get('beta_schedule')!r} prediction_type="
                        f"{scheduler.get('prediction_type')!r}: supported are {sorted(BETA_SCHEDULES)} and {sorted(PREDICTIONS)}")
    schedule = {"name": name, "num_timesteps": int(scheduler["num_train_timesteps"])}
    if name != "cosine":
        schedule.update(beta_start=float(scheduler["beta_start"]), beta_end=float(scheduler["beta_end"]))
    objective = {"_target_": "diffusion.objectives.DDPMObjective", "prediction_type": prediction,
                 "learned_variance": learned_variance}
    return schedule, objective


def default_sampler(learned_variance: bool) -> dict:
    """DiT's own sampling (DDPM, learned range, 250 of 1000 steps respaced evenly), else DDIM-50 on the
    DDIM paper's evenly strided grid."""
    if learned_variance:
        node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "sampler" / "ddpm.yaml"))
        return {**node, "variance_type": "learned_range", "timestep_spacing": "linspace", "clip_sample": False, "steps": 250}
    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "sampler" / "ddim.yaml"))
    return {**node, "timestep_spacing": "leading", "steps": 50}


def build_on_meta(kwargs: dict, where: str) -> torch.nn.Module:
    """The network of a `_target_` config with its tensors on the meta device (shapes, no values): its published
    weights then replace them (`load_state_dict(assign=True)`) without first drawing a random initialisation that
    they would overwrite (0.4 s of a 0.8 s load for DDPM CIFAR-10's 36M parameters, measured)."""
    with torch.device("meta"):
        return build(OmegaConf.create(kwargs), where=where)


def load_exactly(network: torch.nn.Module, state: dict, what: str) -> torch.nn.Module:
    """Every tensor of `state` into its place in `network` (strict); a mismatch is one line naming `what`."""
    try:
        network.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise UserError(f"{what} do not fit the network its config describes "
                        f"({str(error).splitlines()[0][:160]})") from None
    return network


def assemble(kwargs: dict, state: dict, scheduler: dict, device, vae_ckpt, vae_folder, latent_side: int,
             source: dict) -> LoadedModel:
    network = build_on_meta(kwargs, where=f"{source['path']} (as {kwargs['_target_']})")
    load_exactly(network, state, f"{source['path']}: its weights")
    channels = int(kwargs["in_channels"])
    learned_variance = int(kwargs.get("out_channels", channels)) == 2 * channels
    classes = kwargs.get("num_classes")
    model = DiffusionModel(network, None, num_classes=None if classes is None else int(classes) - 1).to(device).eval()
    schedule, objective = schedule_and_objective(scheduler, learned_variance)
    latent = channels != 3
    space = open_latent_space(vae_ckpt or vae_folder, device, latent_side, source) if latent else PixelSpace(latent_side)
    resolution = latent_side * space.autoencoder.downsampling if latent else latent_side
    config = OmegaConf.create({"model": kwargs, "schedule": schedule, "objective": objective,
                               "sampler": default_sampler(learned_variance), "text": None,
                               "diffusion": {"class_conditional": classes is not None}, "source": source})
    payload = {"kind": "diffusion", "step": 0, "source": source,
               "data": {"shape": [channels, latent_side, latent_side], "resolution": resolution,
                        "num_classes": None if classes is None else int(classes) - 1}}
    return LoadedModel(model, config, payload, space, Path(source["path"]))


def open_latent_space(vae_path, device, latent_side: int, source: dict) -> LatentSpace:
    """The published autoencoder a latent model decodes with: a diffusers AutoencoderKL folder or an LDM / SD file."""
    if vae_path is None:
        raise UserError(f"{source['path']} denoises the latents of Stable Diffusion's autoencoder: pass "
                        f"vae_ckpt=<the sd-vae-ft-mse (or -ema) folder, or its .safetensors / .ckpt file>")
    vae_path = Path(vae_path)
    if not vae_path.exists():
        raise UserError(f"vae_ckpt not found: {vae_path}")
    if vae_path.is_dir():
        config = read_json(vae_path / "config.json") if (vae_path / "config.json").is_file() else {}
        if config.get("_class_name") != "AutoencoderKL":
            raise UserError(f"vae_ckpt={vae_path} is not a diffusers AutoencoderKL folder (config.json names "
                            f"{config.get('_class_name')!r})")
        kwargs, state = diffusers_vae.network_config(config), diffusers_vae.to_ours(folder_weights(vae_path))
    else:
        published = read_weights(vae_path)
        if not is_ldm_autoencoder(published):
            raise UserError(f"vae_ckpt={vae_path}: its keys are not an LDM / SD autoencoder's (first keys: "
                            f"{first_keys(published)})")
        kwargs, state = ldm_vae.network_config(published, SD_SCALE_FACTOR), ldm_vae.to_ours(published)
    autoencoder = build_on_meta(kwargs, where=f"vae_ckpt={vae_path}")
    autoencoder = load_exactly(autoencoder, state, f"vae_ckpt={vae_path}: its weights")
    autoencoder = autoencoder.to(device).eval().requires_grad_(False)
    scale = float(kwargs.get("scale_factor") or SD_SCALE_FACTOR)
    reference = {"path": str(vae_path), "fingerprint": weights_fingerprint(state), "scale_factor": scale,
                 "downsampling": int(autoencoder.downsampling), "latent_channels": int(autoencoder.latent_channels),
                 "image_resolution": latent_side * int(autoencoder.downsampling)}
    return LatentSpace(autoencoder, reference)
