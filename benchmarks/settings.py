"""What one benchmark run measures with: device, precision, layout, batch sizes, repeats."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


@dataclass
class Settings:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"  # fp32 | bf16 (autocast, for both sides alike)
    memory_format: str = "channels_last"  # channels_last (our trainer's default) | contiguous, for both sides
    repeats: int = 5  # timed turns per side, interleaved
    warmup: int = 2  # untimed turns per side first
    resolution: int = 32
    context_dim: int = 128  # the scratch text encoder's width
    context_length: int = 20  # tokens per prompt (padded; a toy-birds caption is 12-20)
    train_batch: int = 32
    sample_batch: int = 16  # images; the network sees 2x this with classifier-free guidance
    sample_steps: int = 50
    sample_repeats: int | None = None  # timed sampling runs per side (None: `repeats`); each is 50 forward passes
    guidance_scale: float = 4.0
    data_batches: int = 20  # batches timed per data-loader setting
    quick: bool = False

    @property
    def torch_memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.memory_format == "channels_last" else torch.contiguous_format

    def as_dict(self) -> dict:
        values = asdict(self)
        values["device"] = str(self.device)
        return values
