"""Pixel space: the model denoises the images themselves, [-1, 1]."""

from __future__ import annotations

import torch


class PixelSpace:
    name = "pixels"
    reference = None
    bounded = True  # the data lies in [-1, 1]: a sampler may clamp pred_x0 there

    def __init__(self, resolution: int, channels: int = 3):
        self.info = {"shape": [channels, resolution, resolution]}

    def training_data(self, dataset):
        return dataset

    def batches(self, stream):
        return stream

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x
