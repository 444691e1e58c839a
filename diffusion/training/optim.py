"""AdamW and its learning-rate schedule: linear warm-up, then cosine / linear decay or constant."""

from __future__ import annotations

import math

import torch

from diffusion.errors import check_choice


def lr_at(step: int, max_steps: int, lr: float, warmup_steps: int, decay: str, min_lr_ratio: float) -> float:
    """The learning rate for optimizer step `step` (0-based)."""
    check_choice("lr decay", decay, ("cosine", "linear", "constant"))
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant" or max_steps <= warmup_steps:
        return lr
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * shape)


def make_optimizer(parameters, cfg, device: torch.device) -> torch.optim.Optimizer:
    fused = (device.type == "cuda") if cfg.fused == "auto" else bool(cfg.fused)
    return torch.optim.AdamW([p for p in parameters if p.requires_grad], lr=cfg.lr, betas=tuple(cfg.betas),
                             eps=cfg.eps, weight_decay=cfg.weight_decay, fused=fused or None)
