"""Which device a command runs on: `device=auto | cpu | cuda | cuda:N`, checked in one line."""

from __future__ import annotations

import torch

from diffusion.errors import UserError


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; an unavailable device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is available here; use device=cpu or device=auto")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device
