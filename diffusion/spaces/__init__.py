"""The space the diffusion model works in: pixels (pixels.py), or the latents of a trained autoencoder
(latents.py, autoencoder.py).

`prepare_space(cfg, dataset, device, processes)` returns an object with
- `name`, `info` (shape of what is denoised, stored in checkpoints), `reference` (which autoencoder),
- `training_data(dataset)`: what the training stream draws from (the dataset, or its cached latents),
- `batches(stream)`: turns batches of that into batches of what is denoised,
- `encode(images)` / `decode(x)`: between [-1, 1] images and the denoised space.
"""

from __future__ import annotations

from diffusion.errors import UserError
from diffusion.spaces.pixels import PixelSpace


def prepare_space(cfg, dataset, device, processes):
    vae = cfg.get("vae") or {}
    if not vae.get("ckpt"):
        if vae.get("_target_"):  # an autoencoder group (vae=kl_f4) means latent diffusion: it needs trained weights
            raise UserError("latent diffusion needs a trained autoencoder: train one with `python train.py task=vae "
                            "vae=kl_f4 ...` and pass vae.ckpt=<its checkpoints/last.ckpt> (or use vae=none for pixels)")
        return PixelSpace(int(dataset.resolution))
    from diffusion.spaces.latents import LatentSpace

    return LatentSpace.for_training(cfg, dataset, device, processes)


def space_for_sampling(payload: dict, device, vae_ckpt=None):
    """The space a diffusion checkpoint was trained in, rebuilt from the checkpoint (`vae_ckpt`: where its
    autoencoder lies now, if it moved; still checked against the stored fingerprint)."""
    reference = payload.get("autoencoder")
    if reference is None:
        return PixelSpace(int(payload["data"]["shape"][1]), int(payload["data"]["shape"][0]))
    from diffusion.spaces.latents import LatentSpace

    return LatentSpace.for_sampling(reference, device, vae_ckpt)
