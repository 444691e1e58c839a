"""metrics.jsonl (always), Weights & Biases (logger=wandb, offline by default), and the progress bar."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from omegaconf import OmegaConf

from diffusion.errors import writing


class MetricsLogger:
    """One JSON object per log step in `<run>/metrics.jsonl`; the same values to wandb when enabled."""

    def __init__(self, run_dir: Path, cfg, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb_run = None
        if enabled and cfg.logger.get("wandb"):
            self.wandb_run = start_wandb(run_dir, cfg)

    def resume_at(self, step: int) -> None:
        """A run resumed from its checkpoint at `step` logs the steps after it again: drop the lines past `step`
        (written after that checkpoint, before the run stopped) and any line a crash cut short, so every step is
        logged once. Rewritten atomically."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with writing(self.path):
            temporary.write_text("".join(line + "\n" for line in kept))
        os.replace(temporary, self.path)

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        with writing(self.path), open(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def log_image(self, step: int, key: str, path: Path) -> None:
        if self.enabled and self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def start_wandb(run_dir: Path, cfg):
    """A wandb run that never prompts: offline needs no account; online needs WANDB_API_KEY or a login."""
    import wandb

    mode = cfg.logger.get("mode", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    wanted = dict(console="off", silent=True, x_disable_stats=True, start_method="thread")
    known = getattr(wandb.Settings, "model_fields", None)  # wandb >= 0.18 refuses unknown settings (start_method went away)
    settings = wandb.Settings(**{k: v for k, v in wanted.items() if known is None or k in known})
    return wandb.init(project=cfg.logger.get("project"), name=cfg.logger.get("name"), mode=mode,
                      dir=str(run_dir), tags=list(cfg.logger.get("tags") or []),
                      config=OmegaConf.to_container(cfg, resolve=True), settings=settings, reinit=True)
