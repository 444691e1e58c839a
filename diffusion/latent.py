"""The space the diffusion model works in: pixels, or the latents of a trained autoencoder.

`prepare_space(cfg, dataset, device, processes)` returns an object with
- `name`, `info` (shape of what is denoised, stored in checkpoints), `reference` (which autoencoder),
- `batches(stream)`: turns image batches into batches of what is denoised,
- `encode(images)` / `decode(x)`: between [-1, 1] images and the denoised space.
"""

from __future__ import annotations

import torch


class PixelSpace:
    name = "pixels"
    reference = None

    def __init__(self, resolution: int, channels: int = 3):
        self.info = {"shape": [channels, resolution, resolution]}

    def batches(self, stream):
        return stream

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x


def prepare_space(cfg, dataset, device, processes):
    ckpt = cfg.get("vae", {}).get("ckpt") if cfg.get("vae") is not None else None
    if not ckpt:
        return PixelSpace(int(dataset.resolution))
    from diffusion.latent_space import LatentSpace

    return LatentSpace.for_training(cfg, dataset, device, processes)


def space_for_sampling(payload: dict, device):
    """The space a diffusion checkpoint was trained in, rebuilt from the checkpoint."""
    reference = payload.get("autoencoder")
    if reference is None:
        return PixelSpace(int(payload["data"]["shape"][1]), int(payload["data"]["shape"][0]))
    from diffusion.latent_space import LatentSpace

    return LatentSpace.for_sampling(reference, device)
