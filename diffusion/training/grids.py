"""The EMA sample grid drawn every `trainer.sample_every` steps: fixed prompts and seeds, so grids
from different steps show the same birds getting better."""

from __future__ import annotations

from pathlib import Path

import torch

from diffusion.config import build_scheduler
from diffusion.objectives import objective_for
from diffusion.pipeline import generate_images, image_grid, save_png
from diffusion.schedules import NoiseSchedule


def fixed_prompts(dataset, n: int) -> list[str]:
    """The captions of the dataset's first n items (repeated when it has fewer)."""
    caption = getattr(dataset, "caption", None) or (lambda i: dataset[i]["text"])
    prompts = [caption(i) for i in range(min(n, len(dataset)))]
    return [prompts[i % len(prompts)] for i in range(n)]


class SampleGrid:
    def __init__(self, cfg, dataset, space, run_dir: Path, device):
        self.n = int(cfg.trainer.sample_num)
        self.prompts = fixed_prompts(dataset, self.n)
        num_classes = getattr(dataset, "num_classes", None)
        self.labels = [i % num_classes for i in range(self.n)] if cfg.diffusion.class_conditional and num_classes else None
        schedule = NoiseSchedule.from_name(**cfg.schedule)
        self.scheduler = build_scheduler(cfg.sampler, schedule, cfg.diffusion.prediction_type, bounded=space.bounded,
                                         objective=objective_for(cfg, schedule))
        self.steps, self.eta = int(cfg.sampler.steps), cfg.sampler.get("eta") or 0.0
        self.guidance = float(cfg.trainer.get("sample_guidance", 3.0))
        self.space, self.device = space, device
        self.folder = Path(run_dir) / "samples"

    def draw(self, model, step: int) -> Path:
        was_training = model.training
        model.eval()
        images = generate_images(model, self.scheduler, self.prompts, list(range(self.n)),
                                 shape=tuple(self.space.info["shape"]), steps=self.steps, eta=self.eta,
                                 guidance_scale=self.guidance, class_labels=self.labels,
                                 decode=self.space.decode, device=self.device)
        model.train(was_training)
        path = self.folder / f"step_{step:07d}.png"
        save_png(image_grid(images), path, {"step": step, "prompts": self.prompts, "guidance_scale": self.guidance,
                                              "steps": self.steps})
        return path
