"""Consistency sampling (Song et al. 2023, Algorithm 1): a consistency student maps any point of its teacher's ODE
trajectory straight to the trajectory's clean end, so one network call draws an image; more steps alternate
"denoise" and "re-noise".

The student is the consistency function with the boundary condition built into its parameterisation (Song et al.
2023, App. C), written around the teacher objective's own clean estimate D_theta(x, level) as LCM does (Luo et al.
2023, eq. 9):

    f_theta(x, level) = c_skip(sigma) x + c_out(sigma) D_theta(x, level)
    c_skip(sigma) = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)
    c_out(sigma)  = (sigma - sigma_min) / sqrt((sigma - sigma_min)^2 + sigma_data^2)

so f(x, sigma_min) = x whatever the network (c_skip = 1, c_out = 0). sigma is the level's noise-to-signal ratio
(x = alpha (x0 + sigma eps)), read off the solver's own forward process; the distillation grid ends at the clean
level, so sigma_min = 0 here (Song et al. stop at 0.002 because EDM's grid does).

D_theta is the solver's one step to the clean level: DDIM to t = -1, Euler / Heun to sigma = 0 and flow Euler to
t = 0 all land on the objective's pred_x0, so the student reads its network exactly as the teacher did.

Sampling with n steps (Song et al. 2023, Algorithm 1):
    1. x = the prior at the first level
    2. x0 = f(x, level_i)
    3. if a level follows: x = x0 re-noised to level_{i+1} with fresh noise; else x0 is the image

The levels, the prior and the re-noise are those of `solver`, the ODE sampler the student was distilled with (ddim for
a DDPM teacher, euler / heun in sigma for EDM, flow_euler / flow_heun for flow), and the n levels are picked evenly
from the `grid_points`-point grid it was trained on (as diffusers' LCMScheduler picks from its original steps).
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from diffusion.errors import UserError
from diffusion.samplers.base import Sampler, SamplerStep, check_steps


def c_skip(sigma: float, sigma_data: float, sigma_min: float = 0.0) -> float:
    """Song et al. 2023, App. C: 1 at sigma_min, -> 0 as sigma grows."""
    if math.isinf(sigma):
        return 0.0
    return sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)


def c_out(sigma: float, sigma_data: float, sigma_min: float = 0.0) -> float:
    """0 at sigma_min, -> 1 as sigma grows (the D-form of LCM: the network's clean estimate, not a raw output)."""
    if math.isinf(sigma):
        return 1.0
    return (sigma - sigma_min) / ((sigma - sigma_min) ** 2 + sigma_data**2) ** 0.5


def consistency_function(x: torch.Tensor, pred_x0: torch.Tensor, sigma: float, sigma_data: float,
                         sigma_min: float = 0.0) -> torch.Tensor:
    """f(x, sigma) = c_skip x + c_out D: the boundary condition f(x, sigma_min) = x holds for any D."""
    return c_skip(sigma, sigma_data, sigma_min) * x + c_out(sigma, sigma_data, sigma_min) * pred_x0


def evenly_picked(grid: np.ndarray, n: int) -> np.ndarray:
    """n of the grid's levels, the first one and then every len(grid) / n-th (LCM's inference grid)."""
    return grid[(np.arange(n) * len(grid)) // n]


class ConsistencySampler(Sampler):
    name = "consistency"
    family = None  # fits whichever objective its solver fits (the solver is checked when it is built)
    stochastic = True  # every step but the last re-noises with fresh noise

    def __init__(
        self,
        objective,
        solver: dict | None = None,  # the teacher's ODE sampler: {"name": ddim | euler | heun | flow_euler | ..., options}
        grid_points: int = 50,  # N: the student was distilled on the solver's N-point grid; steps <= N
        sigma_data: float = 0.01,  # the width of the boundary region of c_skip / c_out, in sigma: small, so that
                                   # c_skip ~ 0 on the grid (as LCM's timestep scaling makes it) and the student
                                   # starts as its teacher's clean estimate (Song et al.'s 0.5 suits a raw output F)
        clip_sample: bool = True,  # clamp the clean sample to [-clip_range, clip_range] (pixel space)
        clip_range: float = 1.0,
    ):
        from diffusion.samplers import SAMPLERS  # the registry of the samplers a user names (no cycle at import)

        if not solver:
            raise UserError("sampler=consistency samples consistency students (python train.py task=distill "
                            "teacher=<ckpt>); this checkpoint is not one: use its own sampler")
        options = dict(solver)
        name = options.pop("name", None)
        if name not in SAMPLERS or name == self.name:
            raise UserError(f"sampler.solver.name={name!r}: the consistency sampler needs the ODE solver it was "
                            f"distilled with, one of: {', '.join(n for n in SAMPLERS if n != self.name)}")
        if isinstance(grid_points, bool) or not isinstance(grid_points, int) or grid_points < 1:
            raise UserError(f"sampler.grid_points must be an integer >= 1, got {grid_points!r}")
        if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not sigma_data > 0:
            raise UserError(f"sampler.sigma_data must be a number > 0, got {sigma_data!r}")
        if "clip_sample" in inspect.signature(SAMPLERS[name]).parameters:
            options["clip_sample"] = False  # D is read unclipped (the student's function); the image is clipped below
        self.solver = SAMPLERS[name](objective, **options)
        if self.solver.stochastic:
            raise UserError(f"sampler.solver {name} is stochastic; consistency distillation follows the teacher's ODE: "
                            f"use ddim (eta 0), euler, heun, flow_euler or flow_heun")
        self.objective, self.solver_name = objective, name
        self.grid_points, self.sigma_data = grid_points, float(sigma_data)
        self.clip_sample, self.clip_range = clip_sample, clip_range
        self.final_level = self.solver.final_level
        self.family = self.solver.family

    # -------- the grid (the solver's N-point grid, and n levels picked from it)
    def training_grid(self) -> list:
        """The N levels the student is distilled on, descending; the clean level `final_level` follows them."""
        return self.solver.levels(self.grid_points)

    def levels(self, num_steps: int) -> list:
        check_steps(num_steps, 1, self.name, maximum=self.grid_points)
        return [float(s) if self.family != "discrete" else int(s)
                for s in evenly_picked(np.asarray(self.training_grid()), int(num_steps))]

    # -------- the student's function
    def sigma(self, level) -> float:
        """The level's noise-to-signal ratio sigma = (noise scale) / (signal scale) of the solver's forward process
        (DDPM: sqrt((1 - a) / a); EDM: the level; flow: t / (1 - t), infinite at t = 1; the clean level: 0)."""
        if level == self.final_level:
            return 0.0
        one = torch.ones(1, dtype=torch.float64)
        signal = float(self.solver.noised(one, 0 * one, level))
        noise = float(self.solver.noised(0 * one, one, level))
        return math.inf if signal == 0 else noise / signal

    def clean_estimate(self, denoise, x: torch.Tensor, level) -> tuple[torch.Tensor, torch.Tensor]:
        """(D(x, level), raw network output): the solver's one step to the clean level."""
        out = self.solver.step(denoise, x, level, self.final_level, {}, None)
        return out.pred_x0, out.model_output

    def consistency(self, denoise, x: torch.Tensor, level) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(x, level), raw network output); f(x, final_level) = x without a network call."""
        if level == self.final_level:
            return x, x
        pred_x0, output = self.clean_estimate(denoise, x, level)
        return consistency_function(x, pred_x0, self.sigma(level), self.sigma_data), output

    # -------- sampling (Algorithm 1)
    def prior(self, noise, levels):
        return self.solver.prior(noise, levels)

    def noised(self, x0, noise, level):
        return self.solver.noised(x0, noise, level)

    def implied_noise(self, x, pred_x0, level):
        return self.solver.implied_noise(x, pred_x0, level)

    def step(self, denoise, x, level, level_next, memory, noise=None) -> SamplerStep:
        x0, output = self.consistency(denoise, x, level)  # 2
        x0 = self.clip(x0)
        if level_next == self.final_level:
            return SamplerStep(x0, x0, output)
        if noise is None:
            noise = torch.randn_like(x)
        return SamplerStep(self.solver.noised(x0, noise.to(x0), level_next), x0, output)  # 3

    def __repr__(self):
        return (f"ConsistencySampler(solver={self.solver!r}, grid_points={self.grid_points}, "
                f"sigma_data={self.sigma_data}, clip_sample={self.clip_sample})")
