"""Training: `train(cfg)` runs the task the config names — `task=diffusion` (the denoiser, loop.py) or
`task=vae` (latent diffusion's autoencoder, autoencoder.py) — with what both share in checks.py, ema.py,
optim.py, data.py, logging.py, resume.py, runtime.py and signals.py."""

from __future__ import annotations

from pathlib import Path

from diffusion.errors import UserError, check_choice

TASKS = ("diffusion", "vae")


def train(cfg) -> Path:
    """Train as `cfg` says and return the final checkpoint's path. A refused command changes nothing in the run
    folder (Hydra's rewritten .hydra/overrides.yaml and config.yaml are put back)."""
    try:
        check_choice("task", cfg.task, TASKS)
        if cfg.task == "vae":
            from diffusion.training.autoencoder import train_autoencoder

            return train_autoencoder(cfg)
        from diffusion.training.loop import train_diffusion

        return train_diffusion(cfg)
    except UserError:
        from omegaconf import OmegaConf

        from diffusion.training.resume import put_back_first_record

        output_dir = OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=False)
        if output_dir:
            put_back_first_record(Path(output_dir))
        raise


__all__ = ["train", "TASKS"]
