"""The EMA sample grid drawn every `trainer.sample_every` steps: fixed prompts and seeds, so grids
from different steps show the same birds getting better."""

from __future__ import annotations

from pathlib import Path

from diffusion.config import build_sampler, objective_for
from diffusion.data.images import image_grid, save_png
from diffusion.pipeline import generate_images


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
        self.sampler = build_sampler(cfg.sampler, objective_for(cfg), bounded=space.bounded)
        self.steps = int(cfg.sampler.steps)
        self.guidance = float(cfg.trainer.get("sample_guidance", 3.0))
        self.space, self.device = space, device
        self.folder = Path(run_dir) / "samples"

    def draw(self, model, step: int) -> Path:
        was_training = model.training
        model.eval()
        images = generate_images(model, self.sampler, self.prompts, list(range(self.n)),
                                 shape=tuple(self.space.info["shape"]), steps=self.steps,
                                 guidance_scale=self.guidance, class_labels=self.labels,
                                 decode=self.space.decode, device=self.device)
        model.train(was_training)
        path = self.folder / f"step_{step:07d}.png"
        save_png(image_grid(images), path, {"step": step, "prompts": self.prompts, "guidance_scale": self.guidance,
                                              "steps": self.steps})
        return path
