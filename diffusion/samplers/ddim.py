"""DDIM (Song et al. 2021): a non-Markovian sampler; eta = 0 is deterministic, eta = 1 is DDPM-like."""

from __future__ import annotations

from diffusion.errors import UserError
from diffusion.samplers.base import SamplerStep
from diffusion.samplers.timesteps import TimestepSampler, alpha_bars, noise_or_draw


class DDIMSampler(TimestepSampler):
    name = "ddim"

    def __init__(self, objective, timestep_spacing: str = "leading", clip_sample: bool = False, clip_range: float = 1.0,
                 eta: float = 0.0,  # 0: deterministic; 1: the DDPM posterior's noise (DDIM eq. 16)
                 steps_offset: int = 0,  # added to the leading grid (Stable Diffusion: 1)
                 set_alpha_to_one: bool = True):  # the last step lands on alpha_bar = 1 (x0); False: on alpha_bar_0 (SD)
        super().__init__(objective, timestep_spacing, clip_sample, clip_range, steps_offset)
        if not isinstance(set_alpha_to_one, bool):
            raise UserError(f"set_alpha_to_one must be true or false, got {set_alpha_to_one!r}")
        self.set_alpha_to_one = set_alpha_to_one
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise UserError(f"eta must be a number in [0, 1] (0 deterministic, 1 DDPM-like), got {eta!r}")
        self.eta = float(eta)

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def step(self, denoise, x_t, t, t_prev, memory, noise=None) -> SamplerStep:
        a_t, a_prev = alpha_bars(self.schedule, t, t_prev)
        if t_prev < 0 and not self.set_alpha_to_one:  # SD's scheduler: the last step stops at the first timestep's
            a_prev = float(self.schedule.alpha_bar(0))  # alpha_bar (diffusers' final_alpha_cumprod), not at 1

        # 1. the clean sample and the noise this x_t implies (DDIM eq. 9, and its v / x0 forms)
        pred_x0, pred_eps, output = self.predict(denoise, x_t, t)

        # 2. sigma_t (DDIM eq. 16): eta scales the DDPM posterior standard deviation
        sigma = self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5 if a_t < 1 else 0.0

        # 3. x_{t_prev} = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z  (DDIM eq. 12)
        direction = max(1 - a_prev - sigma**2, 0.0) ** 0.5 * pred_eps
        prev_sample = a_prev**0.5 * pred_x0 + direction
        if sigma > 0:
            prev_sample = prev_sample + sigma * noise_or_draw(noise, x_t)
        return SamplerStep(prev_sample, pred_x0, output)

    def __repr__(self) -> str:
        extra = f", steps_offset={self.steps_offset}" if self.steps_offset else ""
        extra += "" if self.set_alpha_to_one else ", set_alpha_to_one=False"
        return super().__repr__()[:-1] + f", eta={self.eta}{extra})"
