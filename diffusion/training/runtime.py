"""Where and how the job runs: device, precision, processes (torchrun), and per-step randomness."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from diffusion.device import resolve_device
from diffusion.errors import UserError


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA (precision auto or bf16); fp32 otherwise (CPU autocast is slower than fp32 here)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"unknown trainer.precision {precision!r}; choose one of: auto, fp32, bf16")
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Processes:
    """This process's place among the torchrun processes (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_processes(device_name: str) -> tuple[Processes, torch.device]:
    """Join the torchrun process group when launched by torchrun (NCCL on GPUs, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes(), resolve_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(rank, world_size, local_rank), device


def close_processes(processes: Processes) -> None:
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()


def step_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """The generator for one micro-batch's timesteps, noise and caption dropout: a pure function of
    (seed, step, micro), so a resumed run draws exactly what an uninterrupted one would."""
    generator = torch.Generator(device=device)
    generator.manual_seed(((seed * 1_000_003 + step) * 64 + micro) % 2**64)  # any seed in [0, 2**64)
    return generator
