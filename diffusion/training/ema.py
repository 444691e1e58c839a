"""Exponential moving average of the weights (Polyak averaging), the copy that samples best."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """With warm-up the decay ramps as (1 + t) / (10 + t) (the schedule TensorFlow's EMA and the DDPM
    code use), so the average is not dominated by the random initial weights in short runs."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class EMA:
    """A frozen copy of a model whose float parameters track ema <- d * ema + (1 - d) * model."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True, foreach: bool = True):
        self.decay, self.warmup = decay, warmup
        self.foreach = foreach  # False: a plain per-tensor loop (the reference the fused path is tested against)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = ema_decay_at(step, self.decay, self.warmup)
        ema_params = [p for p in self.model.parameters() if p.dtype.is_floating_point]
        params = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        if self.foreach:  # one multi-tensor kernel for all parameters instead of a Python loop of small ones
            torch._foreach_lerp_(ema_params, params, 1 - d)
        else:
            for ema_param, param in zip(ema_params, params):
                ema_param.lerp_(param, 1 - d)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
