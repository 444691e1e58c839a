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
