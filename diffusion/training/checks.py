"""The checks both training tasks share (task=diffusion and task=vae), run before any work, and how a
diverged run is reported."""

from __future__ import annotations

from pathlib import Path

from diffusion.errors import UserError, warn
from diffusion.schema import TrainKeys, validate, values_of, write_back


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def validate_trainer(cfg) -> None:
    """Every user-facing key both tasks read (diffusion/schema.py TrainKeys: trainer, optimizer, dataset's common keys,
    seed, resume, logger, cost), before any work; then the checks that join two keys. The checked values replace the
    typed ones in `cfg` (`trainer.compile=no` -> false)."""
    keys = validate(TrainKeys, values_of(cfg, TrainKeys))
    write_back(cfg, keys)
    trainer = cfg.trainer
    if trainer.get("fit_schedule_to_time") and trainer.max_minutes is None:
        raise UserError("trainer.fit_schedule_to_time=true needs a time budget: set trainer.max_minutes too")
    posthoc = trainer.get("posthoc_ema") or {}
    if posthoc.get("every", 0):
        from diffusion.training.posthoc_ema import sigma_rel_to_gamma

        if not list(posthoc.get("sigma_rels") or []):
            raise UserError("trainer.posthoc_ema.sigma_rels is empty: give the profiles to track, e.g. [0.05,0.10]")
        for sigma_rel in posthoc.sigma_rels:
            sigma_rel_to_gamma(sigma_rel)  # one line naming the range when out of it
    warn_ignored_training_keys(cfg)


def warn_ignored_training_keys(cfg) -> None:
    """A training key that has no effect in this combination is named in one line."""
    if cfg.get("text") is not None and cfg.text.get("_target_") is None and cfg.optim.get("text_lr_scale", 1.0) != 1.0:
        warn(f"optim.text_lr_scale={cfg.optim.text_lr_scale} has no effect: text=none trains no text encoder")


def diverged(step: int, last_good: tuple[Path, int] | None) -> TrainingDiverged:
    kept = f"the last good checkpoint is {last_good[0]} (step {last_good[1]})" if last_good else "no checkpoint was written"
    return TrainingDiverged(f"the loss became NaN or infinite by step {step}; training stopped and {kept}; "
                            f"try a lower optim.lr or trainer.grad_clip")
