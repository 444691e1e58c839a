"""The training loop and what it needs: EMA, checkpoints, optimizer schedule, logging, processes."""

from diffusion.training.loop import train

__all__ = ["train"]
