"""The autoencoder seen from `diffusion/`: building it from config, loading a trained one, and its measures.

`diffusion/` never imports `models.vae`: the network is built from the `vae` config node through
`diffusion.config.build`, which only builds this project's own classes; a checkpoint's stored config is
checked the same way, so a file cannot make us import anything else.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from diffusion.checkpoint import load_checkpoint, weights_fingerprint
from diffusion.config import build, stored_config
from diffusion.errors import UserError, check_choice

# Keys of the `vae` config node that configure training or latent diffusion, not the network.
NOT_CONSTRUCTOR_KEYS = ("ckpt", "loss", "ema", "val_images", "cache_images", "cache_dir")


def build_autoencoder(vae_cfg, where: str = "vae"):
    if not vae_cfg or not vae_cfg.get("_target_"):
        raise UserError("no autoencoder architecture is configured: pick vae=kl_f4 (or vae=kl_f8)")
    return build(vae_cfg, exclude=NOT_CONSTRUCTOR_KEYS, where=where)


def reconstruction_loss(reconstruction: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean absolute (l1) or squared (l2) error per pixel value. L1 blurs less than L2 (Isola et al. 2017)."""
    check_choice("vae.loss.reconstruction", kind, ("l1", "l2"))
    return F.l1_loss(reconstruction, x) if kind == "l1" else F.mse_loss(reconstruction, x)


def psnr(reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for images in [-1, 1] (peak-to-peak 2): [B]."""
    mse = (reconstruction.clamp(-1, 1) - x).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def latent_scale_factor(autoencoder, images: torch.Tensor, batch_size: int, seed: int = 0) -> float:
    """1 / std of the latents (Rombach et al. 2022, sec. 4.3.2), so the diffusion model sees about unit variance.

    Measured on posterior *samples*, not means: samples are what latent diffusion is trained on (the latent
    cache draws from the posterior every step). With the small KL weight the two differ by well under 1 %.
    """
    device = next(autoencoder.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = autoencoder.training
    autoencoder.eval()
    latents = [autoencoder.encode(images[i: i + batch_size].to(device)).sample(generator).float().cpu()
               for i in range(0, len(images), batch_size)]
    autoencoder.train(was_training)
    return float(1.0 / torch.cat(latents).std())


def encoding_weights(payload: dict) -> dict:
    """The weights that encode and decode: the EMA copy when the autoencoder kept one."""
    return payload["ema"] if payload.get("ema") is not None else payload["model"]


def load_autoencoder(path, device="cpu"):
    """A trained autoencoder from its checkpoint (kind "vae"): (network in eval mode, payload, fingerprint)."""
    payload = load_checkpoint(path, kind="vae")
    config = stored_config(payload, path)
    autoencoder = build_autoencoder(config.vae, where=f"{path} config.vae")
    weights = encoding_weights(payload)
    try:
        autoencoder.load_state_dict(weights)
    except RuntimeError as error:
        raise UserError(f"{path}: autoencoder weights do not match its stored config "
                        f"({str(error).splitlines()[0][:120]})") from None
    if payload.get("scale_factor") is None:
        raise UserError(f"{path} has no latent scale_factor; finish or resume its training (task=vae) to write one")
    return autoencoder.to(device).eval().requires_grad_(False), payload, weights_fingerprint(weights)


def resolved(path) -> Path:
    return Path(str(path)).expanduser().resolve()
