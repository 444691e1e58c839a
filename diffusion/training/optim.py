"""AdamW and its learning-rate schedule: linear warm-up, then cosine / linear decay or constant."""

from __future__ import annotations

import math

import torch

from diffusion.errors import check_choice


CPU_FUSED_ADAMW = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 4)


def lr_at(step: int, max_steps: int, lr: float, warmup_steps: int, decay: str, min_lr_ratio: float,
          time_progress: float = 0.0) -> float:
    """The learning rate for optimizer step `step` (0-based). After warm-up the decay's progress is the fraction
    of the post-warm-up steps done, or `time_progress` (the fraction of a time budget spent) when that is ahead:
    a run cut short by its time budget still ends fully decayed (budgeted training, Li et al. 2020)."""
    check_choice("lr decay", decay, ("cosine", "linear", "constant"))
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant" or max_steps <= warmup_steps:
        return lr
    progress = min(1.0, max((step - warmup_steps) / max(1, max_steps - warmup_steps), time_progress))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * shape)


def make_optimizer(parameters, cfg, device: torch.device, text_parameters=()) -> torch.optim.Optimizer:
    """AdamW over `parameters`; `text_parameters` (a subset of them) get `cfg.text_lr_scale` times the
    learning rate in a second group. Every group carries its `lr_scale`: the loop sets lr = lr_at(...) * lr_scale."""
    # auto: the fused kernel wherever torch has one (CUDA; CPU since torch 2.4, where it is 5x the per-tensor loop)
    fused = (device.type == "cuda" or (device.type == "cpu" and CPU_FUSED_ADAMW)) if cfg.fused == "auto" else bool(cfg.fused)
    text_scale = float(cfg.get("text_lr_scale", 1.0))  # validated with the rest of the config (loop.validate)
    trainable = [p for p in parameters if p.requires_grad]
    text_ids = {id(p) for p in text_parameters if p.requires_grad}
    groups = [{"params": trainable, "lr_scale": 1.0}]
    if text_scale != 1.0 and text_ids:  # one group otherwise: optimizer states stay loadable across versions
        groups = [{"params": [p for p in trainable if id(p) not in text_ids], "lr_scale": 1.0},
                  {"params": [p for p in trainable if id(p) in text_ids], "lr_scale": text_scale}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """This step's learning rate, times each group's `lr_scale` (groups from older checkpoints have none: 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
