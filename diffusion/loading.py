"""`load_model`: the one door to every model `sample.py ckpt=` opens, recognised from its contents.

    load_model("outputs/<date>/<time>/checkpoints/last.ckpt")     # this project's checkpoint
    load_model("birds.safetensors")                                # its export (python -m diffusion.export)
    load_model("ddpm-cifar10-32/")                                 # a diffusers model or pipeline folder
    load_model("DiT-XL-2-256x256.pt", vae_ckpt="sd-vae-ft-mse/")   # facebookresearch/DiT, decoded by SD's autoencoder
    load_model("stable-diffusion-v1-5/")                           # SD 1.x: a diffusers pipeline folder, or
    load_model("v1-5-pruned-emaonly.safetensors")                  # its original single file

Every one comes back as a `LoadedModel` (diffusion/model.py): `.network` is the hand-written network, `.sampler()`
its default sampler, `.space` where it denoises. A file's format is read from what it holds (a checkpoint's
`format_version`, a folder's config.json / model_index.json, a state dict's keys), never from its name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffusion.device import resolve_device
from diffusion.errors import UserError
from diffusion.export import is_export, read_export
from diffusion.model import LoadedModel, open_checkpoint, open_payload


def is_project_checkpoint(path: Path) -> bool | None:
    """True for this project's checkpoint, False for another weights file, None when unreadable (the project's
    reader then names what is wrong). Tensors are memory-mapped, not read."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 (damaged, pickled objects, not a torch file: the checkpoint reader explains)
        return None
    return isinstance(payload, dict) and "format_version" in payload


def load_model(path, device="cpu", use_ema: bool = True, vae_ckpt=None, tokenizer=None, text_encoder=None,
               clip_skip: int | None = None) -> LoadedModel:
    """Open a model for sampling on `device` (with its EMA weights unless `use_ema=False`, for this project's
    checkpoints); `vae_ckpt` is a latent model's autoencoder when it is not where the checkpoint says.
    Stable Diffusion 1.x only: `tokenizer` (CLIP's vocabulary), `text_encoder` (when the checkpoint lacks it) and
    `clip_skip` (1 = the text model's last layer, 2 = the one before)."""
    from diffusion.pretrained.stable_diffusion import open_published

    device = resolve_device(device) if isinstance(device, str) else device
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise UserError(f"checkpoint not found: {path} (give this project's .ckpt, e.g. outputs/<date>/<time>/checkpoints/"
                        f"last.ckpt, a diffusers model or pipeline folder, or a published weights file)")
    sd_options = {"tokenizer": tokenizer, "text_encoder": text_encoder, "clip_skip": clip_skip}
    ours = path.is_file() and (is_export(path) if path.suffix == ".safetensors" else is_project_checkpoint(path) is not False)
    given = [key for key, value in sd_options.items() if value is not None]
    if ours and given:
        raise UserError(f"{given[0]}= applies to Stable Diffusion checkpoints; {path} is this project's (drop {given[0]}=)")
    if ours and path.suffix != ".safetensors":
        return open_checkpoint(path, device, use_ema, vae_ckpt)
    if ours:
        return open_payload(read_export(path), path, device, True, vae_ckpt)
    return open_published(path, device, vae_ckpt, **sd_options)


# ---------------------------------------------------------------------------------------------- autoguidance's guide

# objective options that shape only training (the noise levels drawn, the loss weight) or the sampler's range, which
# comes from the main model: two networks differing in these alone read inputs and mean outputs the same way
TRAINING_ONLY = ("loss_weighting", "min_snr_gamma", "p_mean", "p_std", "sigma_min", "sigma_max", "time_sampling",
                 "logit_mean", "logit_std", "shift")


def sampling_objective(loaded: LoadedModel) -> dict:
    """What makes a network's output mean one thing: its objective's options without the training-only ones, and
    for a DDPM objective the noise schedule it reads timesteps with."""
    from diffusion.config import objective_node

    node = {key: value for key, value in objective_node(loaded.config).items() if key not in TRAINING_ONLY}
    if getattr(loaded.objective, "schedule", None) is not None:
        node["schedule"] = {key: loaded.config.schedule.get(key) for key in ("name", "num_timesteps", "zero_terminal_snr")}
    return node


def check_guide(main: LoadedModel, guide: LoadedModel) -> None:
    """Autoguidance combines the two networks' outputs step by step: the guide must denoise the same space at the same
    size, read by the same objective, and take the same kind of condition. One line naming the first difference."""
    def conditioning(loaded):
        model = loaded.model
        return ("text" if model.is_text_conditional else "no text") + (
            f", {model.num_classes} classes" if model.num_classes is not None else "")

    def space(loaded):
        reference = loaded.payload.get("autoencoder")
        return loaded.space.name + (f" of autoencoder {reference['fingerprint']}" if reference else "")

    differences = [("space", space(main), space(guide)),
                   ("denoised shape (C, H, W)", tuple(main.shape), tuple(guide.shape)),
                   ("objective", sampling_objective(main), sampling_objective(guide)),
                   ("conditioning", conditioning(main), conditioning(guide))]
    for what, mine, its in differences:
        if mine != its:
            raise UserError(f"the guide {guide.path} does not fit the model {main.path}: its {what} is {its}, the model's "
                            f"is {mine}; autoguidance needs a smaller or earlier model of the same data, objective and "
                            f"conditioning")


def load_guide(path, main: LoadedModel, device="cpu", use_ema: bool = True, vae_ckpt=None) -> LoadedModel:
    """Autoguidance's guide (`guide_ckpt=`), opened like any model and checked against the main one."""
    guide = load_model(path, device, use_ema, vae_ckpt)
    check_guide(main, guide)
    return guide
