"""What every objective tells the rest of the framework.

An objective is the training half of the denoising math: how a noisy sample is made from
(x0, noise, t), what the network is given and asked to output, and the loss weight. The sampling
half reads the same object through two small views, so a solver never branches on the objective:

- every objective: `denoise(model_output, x_t, t) -> pred_x0`, and `network_input(x_t, t)` /
  `model_time(t)` for what the raw network is called with (EDM's c_in and c_noise live here: the
  network never learns which objective trains it);
- the "sigma view" used by the k-diffusion-style solvers (euler, heun, dpm_solver): any objective
  whose x_t is a scaled x0 + sigma * eps, x_t = alpha(t) (x0 + sigma(t) eps), exposes
  `sigma_range()` and `from_sigma(sigma) -> (t, alpha)`. Variance-preserving DDPM has alpha =
  1/sqrt(1+sigma^2), EDM alpha = 1; rectified flow (alpha = 1 - t) reaches sigma = inf at t = 1 and
  is sampled by its own flow_euler / flow_heun instead.
"""

from __future__ import annotations

import torch


class Objective:
    name = "objective"
    # the sampler families that fit: "discrete" (ddpm, ddim), "sigma" (euler, heun, dpmpp_2m), "flow"
    # (flow_euler, flow_heun); each sampler names its own family (diffusion/samplers/)
    sampler_families: tuple[str, ...] = ()
    needs_schedule = False  # True: built on the `schedule` config group's NoiseSchedule
    network_inputs: tuple[str, ...] = ()  # what the network takes besides (x_t, t): MeanFlow's ("r", "guidance")

    # -------- training
    def draw_times(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n training noise levels in this objective's own time variable (on the CPU)."""
        raise NotImplementedError

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model_output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, x_t: torch.Tensor,
             t: torch.Tensor) -> torch.Tensor:
        """Per-example weighted squared error [B]."""
        raise NotImplementedError

    def training_loss(self, network, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-example loss [B] of one micro-batch. `network(x, time, unconditional=False, rows=slice(None), **times)`
        is the model on this micro-batch's prompts of `rows` (or on empty prompts): an objective that needs the
        network inside its loss (MeanFlow's Jacobian-vector product) overrides this; the others make x_t, call it
        once and score the output."""
        x_t = self.noisy(x0, noise, t).to(x0.dtype)
        return self.loss(network(self.network_input(x_t, t), self.model_time(t)), x0, noise, x_t, t)

    # -------- both
    def network_input(self, x_t: torch.Tensor, t) -> torch.Tensor:
        return x_t

    def model_time(self, t):
        """What the network's time embedding receives for objective time t."""
        return t

    def denoise(self, model_output: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """The network output at (x_t, t) as an estimate of the clean sample."""
        raise NotImplementedError

    # -------- the sigma view (k-diffusion solvers)
    def sigma_range(self) -> tuple[float, float]:
        raise NotImplementedError(f"the {self.name} objective has no finite sigma range")

    def from_sigma(self, sigma: float) -> tuple[float, float]:
        """(t, alpha) with x_t = alpha * (x0 + sigma * eps)."""
        raise NotImplementedError

    def sigma_of_model_time(self, model_time: float) -> float:
        """The sigma-view noise level of the time the network receives (guidance by noise level reads it)."""
        raise NotImplementedError(f"the {self.name} objective does not map its model time to sigma")

    def prior_std(self, sigma_max: float) -> float:
        """Standard deviation of the sigma-view sample x0 + sigma eps at the start of sampling."""
        return sigma_max

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
