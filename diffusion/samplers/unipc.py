"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), B(h) = e^h - 1 ("bh2"),
data prediction, orders 1-3: one network call a step.

In the sigma view, with lambda = -log sigma and a step from sigma_s to sigma_t, h = lambda_t - lambda_s,
B(h) = expm1(-h) (bh2, as diffusers writes it for data prediction), and the data estimates
D_k = D(x_k; sigma_k) of earlier steps at r_k = (lambda_k - lambda_s) / h (negative: they lie behind):

    D1_k = (D_k - D_s) / r_k                                         scaled differences
    UniP-p:  x_t  = (sigma_t/sigma_s) x_s - expm1(-h) D_s - B(h) sum_k rho_k D1_k
    UniC-p:  x_t^c = the same from x_s, plus the new point's term B(h) rho_p (D(x_t; sigma_t) - D_s)

with rho solving R rho = b, R_jk = r_k^(j-1) (r = 1 for the new point), b_j = j! phi_{j+1}(-h) / B(h)
(UniP-p uses the first p - 1 rows and columns; diffusers' shortcuts: UniP-2 takes rho = 1/2, UniC-1
rho = 1/2). UniC-p raises the order to p + 1. A step at sigma_i:

    1. D_i = D(x_i; sigma_i) at the predicted x_i
    2. UniC: correct x_i with D_i, from the previous step's start, history and order (memory)
    3. UniP: predict x_{i+1} from the corrected x_i, of order min(order, steps so far, steps left)

so the corrector costs no call: D_i, taken at the uncorrected x_i, serves both (UniPC's trick). Step 3
to sigma = 0 is first order and lands on D_i, so the last step skips step 2 (its result would be
multiplied by sigma_next / sigma = 0). "Steps left" (diffusers' `lower_order_final`) is read from the
grid: `following` hands each step a level that knows how many steps come after it (`GridLevel`); a
plain float only tells the last step (sigma_next = 0).
"""

from __future__ import annotations

import math

import numpy as np

from diffusion.errors import UserError
from diffusion.samplers.base import SamplerStep
from diffusion.samplers.sigmas import SigmaSampler


class GridLevel(float):
    """A level that also says how many steps of the grid follow the step landing on it."""

    steps_after: int

    def __new__(cls, value, steps_after: int):
        level = super().__new__(cls, value)
        level.steps_after = steps_after
        return level


def unipc_weights(h: float, ratios: list[float], corrector: bool) -> np.ndarray:
    """rho for UniP-p / UniC-p (bh2), p = len(ratios) + 1; `ratios` are r_k of the p - 1 earlier data
    estimates, most recent first; UniC's last weight is the new point's (Zhao et al. 2023, Theorem 3.1)."""
    order = len(ratios) + 1
    hh = -h  # data prediction integrates in -lambda
    b_h = math.expm1(hh)
    phi = math.expm1(hh) / hh - 1  # h phi_2 recursion, as diffusers writes it
    b, factorial = [], 1
    for j in range(1, order + 1):
        b.append(phi * factorial / b_h)
        factorial *= j + 1
        phi = phi / hh - 1 / factorial
    r = np.array(list(ratios) + [1.0])
    R = np.stack([r**j for j in range(order)])  # (order, order)
    if corrector:
        return np.array([0.5]) if order == 1 else np.linalg.solve(R, np.array(b))
    if order == 1:
        return np.zeros(0)
    return np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], np.array(b[:-1]))


def unified_update(x, sigma_s, sigma_t, history, order, pred_x0_t=None):
    """UniP (pred_x0_t None) or UniC from x at sigma_s to sigma_t; `history` is [(sigma_k, D_k)], most recent
    (sigma_s, D_s) first, and the update reads its first `order` entries (UniP: order - 1 earlier ones)."""
    h = math.log(sigma_s) - math.log(sigma_t)
    pred_x0_s = history[0][1]
    earlier = history[1:order]
    ratios = [(math.log(sigma_s) - math.log(sigma_k)) / h for sigma_k, _ in earlier]
    rho = unipc_weights(h, ratios, corrector=pred_x0_t is not None)
    residual = sum(rho_k * (d_k - pred_x0_s) / r_k for rho_k, r_k, (_, d_k) in zip(rho, ratios, earlier))
    if pred_x0_t is not None:
        residual = residual + rho[-1] * (pred_x0_t - pred_x0_s)
    return (sigma_t / sigma_s) * x - math.expm1(-h) * (pred_x0_s + residual)


class UniPCSampler(SigmaSampler):
    name = "unipc"

    def __init__(self, objective, order: int = 2, **grid):
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise UserError(f"sampler.order must be 1, 2 or 3 for unipc, got {order!r}")
        super().__init__(objective, **grid)
        self.order = order

    def following(self, levels):
        n = len(levels)
        return [GridLevel(s, n - 1 - i) for i, s in enumerate(levels[1:])] + [GridLevel(self.final_level, 0)]

    def step(self, denoise, x, sigma, sigma_next, memory, noise=None):
        pred_x0, output = self.denoised(denoise, x, sigma)  # 1
        if "history" in memory and sigma_next != 0:  # 2
            x = unified_update(memory["x"], memory["history"][0][0], sigma, memory["history"], memory["order"], pred_x0)
        history = [(sigma, pred_x0)] + memory.get("history", [])[: self.order - 1]
        if sigma_next == 0:  # 3, the last step: first order, lands on D_i
            return SamplerStep(pred_x0, pred_x0, output)
        order = min(self.order, len(history), getattr(sigma_next, "steps_after", self.order) + 1)
        prev_sample = unified_update(x, sigma, sigma_next, history, order)
        return SamplerStep(prev_sample, pred_x0, output, memory={"x": x, "history": history, "order": order})

    def __repr__(self):
        return f"{super().__repr__()[:-1]}, order={self.order})"
