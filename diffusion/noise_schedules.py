"""Noise schedules: the forward process q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

A `NoiseSchedule` holds `betas` and `alphas_cumprod` (alpha-bar) in float64 for t = 0 .. T-1 and
the small pure helpers everything else uses: the signal-to-noise ratio and `add_noise`. What a network
predicts on it (epsilon, v, x0) and the conversions between them belong to the DDPM objective
(diffusion/objectives/ddpm.py), the one place they are written.

    python -c "from diffusion.noise_schedules import NoiseSchedule as S; print(S.from_name('cosine').snr(999))"
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffusion.errors import UserError, check_choice

SCHEDULE_NAMES = ("linear", "scaled_linear", "cosine", "sigmoid")


# ----------------------------------------------------------------------------------------------
# Beta schedules: pure functions of the number of timesteps, all float64.


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020: betas linear in t from 1e-4 to 0.02 (for T = 1000)."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def scaled_linear_betas(num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion (Rombach et al. 2022): linear in sqrt(beta)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def betas_from_alpha_bar(alpha_bar, num_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Discretise a continuous alpha_bar(s), s in [0, 1]: beta_t = 1 - alpha_bar((t+1)/T) / alpha_bar(t/T)."""
    s = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    a = alpha_bar(s)
    return (1 - a[1:] / a[:-1]).clamp(max=max_beta)


def cosine_betas(num_timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi/2), betas capped at 0.999."""
    return betas_from_alpha_bar(lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2, num_timesteps)


def sigmoid_betas(num_timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """Chen 2023 ("On the importance of noise scheduling"), Algorithm 1: alpha_bar follows a shifted sigmoid."""
    v_start, v_end = torch.sigmoid(torch.tensor(start / tau)), torch.sigmoid(torch.tensor(end / tau))

    def alpha_bar(u):
        return (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)

    # alpha_bar(1) = 0 exactly; the 0.999 cap keeps the last beta below 1 as for cosine.
    return betas_from_alpha_bar(lambda u: alpha_bar(u).double(), num_timesteps)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alpha_bar) so that alpha_bar_T = 0 (SNR 0 at t = T)
    while alpha_bar_0 is unchanged."""
    sqrt_alpha_bar = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * first / (first - last)
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


BETA_SCHEDULES = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
}


# ----------------------------------------------------------------------------------------------
# Small pure helpers.


def expand_like(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-example values [B] (or a scalar) -> [B, 1, 1, ...] in x's dtype and device, to broadcast over x."""
    if values.ndim == 0 and values.device.type == "cpu":  # a host scalar broadcasts into GPU kernels as it is:
        return values.to(dtype=x.dtype)  # copying it to the GPU would make the host wait for the GPU (per sampling step)
    values = values.to(device=x.device, dtype=x.dtype)
    return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


@dataclass(frozen=True)
class NoiseSchedule:
    """betas and alpha-bar for t = 0 .. T-1, float64, on the CPU."""

    betas: torch.Tensor  # [T]
    name: str = "custom"
    zero_terminal_snr: bool = False

    @classmethod
    def from_name(cls, name: str, num_timesteps: int = 1000, zero_terminal_snr: bool = False, **kwargs) -> "NoiseSchedule":
        check_choice("noise schedule", name, SCHEDULE_NAMES)
        if int(num_timesteps) < 2:
            raise UserError(f"num_timesteps must be at least 2, got {num_timesteps}")
        betas = BETA_SCHEDULES[name](int(num_timesteps), **kwargs)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas=betas, name=name, zero_terminal_snr=bool(zero_terminal_snr))

    def __post_init__(self):
        object.__setattr__(self, "betas", self.betas.detach().to("cpu", torch.float64))
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1 - self.betas, dim=0))

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    def alpha_bar(self, t) -> torch.Tensor:
        """alpha-bar at integer timesteps t (int, or a tensor on any device: the result stays on it, with
        no host-device synchronisation); t = -1 means 'before step 0' (alpha-bar = 1)."""
        t = torch.as_tensor(t, dtype=torch.long)
        table = self._table(t.device)
        return torch.where(t >= 0, table[t.clamp(min=0)], torch.ones((), dtype=table.dtype, device=t.device))

    def _table(self, device: torch.device) -> torch.Tensor:
        """alphas_cumprod on `device`, copied once per device (float32 where float64 is unsupported)."""
        if device.type == "cpu":
            return self.alphas_cumprod
        cache = self.__dict__.setdefault("_device_tables", {})
        if device not in cache:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            cache[device] = self.alphas_cumprod.to(device, dtype)
        return cache[device]

    def snr(self, t) -> torch.Tensor:
        """SNR(t) = alpha_bar / (1 - alpha_bar) (Kingma et al. 2021)."""
        a = self.alpha_bar(t)
        return a / (1 - a)

    def log_snr(self, t) -> torch.Tensor:
        a = self.alpha_bar(t)
        return torch.log(a) - torch.log1p(-a)

    # q(x_t | x_0), Ho et al. 2020 eq. 4
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        sqrt_a, sqrt_1m_a = self.sqrt_alpha_bars(t, x0)
        return sqrt_a * x0 + sqrt_1m_a * noise

    def sqrt_alpha_bars(self, t, x: torch.Tensor):
        """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) for an int or [B] tensor t, computed in float64
        and then shaped and cast to broadcast over x."""
        a = self.alpha_bar(t)
        return expand_like(a.sqrt(), x), expand_like((1 - a).sqrt(), x)
