"""What the autoencoder trainer measures every `trainer.sample_every` steps, on fixed held-out images:
PSNR of the reconstructions, and a grid with the originals above their reconstructions (samples/step_XXXXXXX.png)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from diffusion.data.images import image_grid, save_png
from diffusion.errors import UserError
from diffusion.spaces.autoencoder import psnr
from diffusion.training.data import build_dataset

GRID_COLUMNS = 8  # images per row: a row of originals, then the row of their reconstructions


def first_images(dataset, count: int) -> torch.Tensor:
    """Items 0..count-1 of a dataset as one [N, 3, H, W] tensor in [-1, 1] (repeated when it has fewer)."""
    size = len(dataset)
    return torch.stack([dataset[i % size]["image"] for i in range(count)])


def held_out_images(cfg, train_dataset, count: int) -> torch.Tensor:
    """The val split's first `count` images; the training images when the dataset has no val split."""
    try:
        val = build_dataset(cfg, "val")
    except UserError as error:
        warnings.warn(f"no val split ({error}); measuring PSNR on training images")
        val = train_dataset
    torch.manual_seed(cfg.seed)  # datasets that flip at random flip the same way every run
    return first_images(val, count)


class ReconstructionCheck:
    def __init__(self, cfg, train_dataset, run_dir: Path, device):
        self.images = held_out_images(cfg, train_dataset, int(cfg.vae.val_images))  # (N, 3, H, W)
        wanted = max(1, min(int(cfg.trainer.sample_num), len(self.images)))
        self.columns = min(GRID_COLUMNS, wanted)
        self.grid_num = wanted // self.columns * self.columns  # whole rows, so each original sits above its own
        self.batch_size = int(cfg.trainer.batch_size)
        self.folder = Path(run_dir) / "samples"
        self.device = device

    @torch.no_grad()
    def reconstruct(self, autoencoder) -> torch.Tensor:
        """Decode the posterior mean of every held-out image (deterministic: the same latent sampling uses)."""
        was_training = autoencoder.training
        autoencoder.eval()
        parts = [autoencoder(self.images[i: i + self.batch_size].to(self.device), sample_posterior=False)[0].float().cpu()
                 for i in range(0, len(self.images), self.batch_size)]
        autoencoder.train(was_training)
        return torch.cat(parts)

    def run(self, autoencoder, step: int) -> tuple[float, Path]:
        """Mean held-out PSNR (dB) and the path of the grid PNG."""
        reconstructions = self.reconstruct(autoencoder)
        value = float(psnr(reconstructions, self.images).mean())
        rows = []
        for start in range(0, self.grid_num, self.columns):
            rows += [self.images[start: start + self.columns], reconstructions[start: start + self.columns].clamp(-1, 1)]
        path = self.folder / f"step_{step:07d}.png"
        save_png(image_grid(torch.cat(rows), columns=self.columns), path,
                 {"step": step, "psnr_db": round(value, 3), "layout": "originals above reconstructions (posterior mean)"})
        return value, path
