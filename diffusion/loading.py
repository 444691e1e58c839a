"""Rebuilding a trained model from its checkpoint alone (no training config, no data needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from diffusion.config import build_scheduler, check_targets
from diffusion.errors import UserError
from diffusion.model import DiffusionModel, build_diffusion_model
from diffusion.schedules import NoiseSchedule
from diffusion.training.checkpoint import load_checkpoint


@dataclass
class LoadedModel:
    model: DiffusionModel
    config: DictConfig  # the training config stored in the checkpoint
    payload: dict
    schedule: NoiseSchedule
    space: object  # PixelSpace or LatentSpace: where the model denoises, and how to decode
    path: Path

    def scheduler(self, sampler_cfg=None):
        """The checkpoint's sampler, or `sampler_cfg` (e.g. from `sample.py sampler=ddpm`)."""
        return build_scheduler(sampler_cfg or self.config.sampler, self.schedule, self.config.diffusion.prediction_type,
                               bounded=self.space.bounded, objective=self.objective)

    @property
    def objective(self):
        """The objective the checkpoint was trained with (checkpoints from before objectives: ddpm)."""
        from diffusion.objectives import objective_for

        return objective_for(self.config, self.schedule)


def stored_config(payload: dict, path) -> DictConfig:
    try:
        config = OmegaConf.create(payload["config"])
    except Exception:
        raise UserError(f"{path}: the config stored in the checkpoint cannot be read") from None
    check_targets(config, where=f"{path} config")  # a checkpoint may only name this project's classes
    return config


def load_diffusion_checkpoint(path, device="cpu", use_ema: bool = True, vae_ckpt=None) -> LoadedModel:
    from diffusion.latent import space_for_sampling

    payload = load_checkpoint(path, kind="diffusion")
    config = stored_config(payload, path)
    vocabulary = payload["tokenizer"]["vocabulary"] if payload.get("tokenizer") else None
    model = build_diffusion_model(config, payload["data"], vocabulary)
    try:
        model.load_state_dict(payload["ema" if use_ema else "model"])
    except RuntimeError as error:
        raise UserError(f"{path}: weights do not match the stored config ({str(error).splitlines()[0][:120]})") from None
    model = model.to(device).eval()
    space = space_for_sampling(payload, device, vae_ckpt)
    return LoadedModel(model, config, payload, NoiseSchedule.from_name(**config.schedule), space, Path(path))
