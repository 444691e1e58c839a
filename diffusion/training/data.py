"""Datasets and an endless, resumable, shardable stream of batches."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from diffusion.config import build


class ResumableSampler(Sampler):
    """Indices from one reshuffled permutation per epoch (seeded by seed and epoch), starting after
    `start` samples of the global stream; this process takes its slice of every global micro-batch.

    The global stream depends only on (seed, dataset size), so a run resumed at step k sees the same
    samples as an uninterrupted one, with any number of processes for the same global batch.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.rank, self.world_size = start, rank, world_size

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        position, epoch_cached, order = self.start, None, None
        while True:
            for k in range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size):
                epoch, offset = divmod(position + k, self.size)
                if epoch != epoch_cached:  # a batch may straddle two epochs; each epoch is one permutation
                    generator = torch.Generator().manual_seed((self.seed * 7919 + epoch) % 2**64)
                    order, epoch_cached = torch.randperm(self.size, generator=generator).tolist(), epoch
                yield order[offset]
            position += global_batch

    def __len__(self):  # endless; DataLoader only needs this for progress estimates
        return 2**62


def build_dataset(cfg, split: str):
    """A dataset from the `dataset` config node (its keys are the constructor's arguments)."""
    return build(cfg.dataset, where="dataset", split=split)


def data_info(dataset) -> dict:
    """What the model needs to know about the data (stored in checkpoints, so sampling needs no data)."""
    return {"resolution": int(dataset.resolution), "channels": 3,
            "num_classes": getattr(dataset, "num_classes", None), "class_names": getattr(dataset, "class_names", None)}


def batch_stream(dataset, batch_size: int, seed: int, start: int, rank: int, world_size: int,
                 num_workers: int, pin_memory: bool):
    """An endless iterator of collated batches ({"image": [B,3,H,W], "text": [B], "label": [B], ...})."""
    sampler = ResumableSampler(len(dataset), batch_size, seed, start, rank, world_size)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=pin_memory, drop_last=True, persistent_workers=num_workers > 0,
                        prefetch_factor=4 if num_workers > 0 else None)
    return iter(loader)
