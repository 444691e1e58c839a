"""The checks both training tasks share (task=diffusion and task=vae), run before any work, and how a
diverged run is reported."""

from __future__ import annotations

from pathlib import Path

from diffusion.cost import check_power_watts
from diffusion.errors import UserError, check_choice


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def validate_trainer(cfg) -> None:
    """The trainer, optimizer, logger and cost keys every task reads."""
    trainer = cfg.trainer
    for key in ("max_steps", "batch_size", "grad_accum", "log_every"):
        if isinstance(trainer[key], bool) or not isinstance(trainer[key], int) or trainer[key] < 1:
            raise UserError(f"trainer.{key} must be a positive integer, got {trainer[key]!r}")
    if isinstance(cfg.optim.lr, bool) or not isinstance(cfg.optim.lr, (int, float)) or not cfg.optim.lr > 0:
        raise UserError(f"optim.lr must be a number > 0, got {cfg.optim.lr!r}")
    text_lr_scale = cfg.optim.get("text_lr_scale", 1.0)
    if not isinstance(text_lr_scale, (int, float)) or not text_lr_scale > 0:
        raise UserError(f"optim.text_lr_scale must be a number > 0, got {text_lr_scale!r}")
    check_choice("trainer.precision", trainer.precision, ("auto", "fp32", "bf16"))
    if trainer.max_minutes is not None and not (isinstance(trainer.max_minutes, (int, float)) and trainer.max_minutes > 0):
        raise UserError(f"trainer.max_minutes must be a number of minutes > 0 (or null), got {trainer.max_minutes!r}")
    if trainer.get("fit_schedule_to_time") and trainer.max_minutes is None:
        raise UserError("trainer.fit_schedule_to_time=true needs a time budget: set trainer.max_minutes too")
    check_choice("logger.mode", cfg.logger.get("mode", "offline"), ("offline", "online", "disabled"))
    check_power_watts(cfg)
    posthoc = trainer.get("posthoc_ema") or {}
    every = posthoc.get("every", 0)
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise UserError(f"trainer.posthoc_ema.every={every!r}: use an integer >= 0 (0 = off)")
    if every:
        from diffusion.training.posthoc_ema import sigma_rel_to_gamma

        sigma_rels = list(posthoc.get("sigma_rels") or [])
        if not sigma_rels:
            raise UserError("trainer.posthoc_ema.sigma_rels is empty: give the profiles to track, e.g. [0.05,0.10]")
        for sigma_rel in sigma_rels:
            if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)):
                raise UserError(f"trainer.posthoc_ema.sigma_rels holds {sigma_rel!r}: use numbers, e.g. [0.05,0.10]")
            sigma_rel_to_gamma(sigma_rel)  # one line naming the range when out of it


def diverged(step: int, last_good: tuple[Path, int] | None) -> TrainingDiverged:
    kept = f"the last good checkpoint is {last_good[0]} (step {last_good[1]})" if last_good else "no checkpoint was written"
    return TrainingDiverged(f"the loss became NaN or infinite by step {step}; training stopped and {kept}; "
                            f"try a lower optim.lr or trainer.grad_clip")
