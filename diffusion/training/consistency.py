"""The consistency-distillation loss (Song et al. 2023, Algorithm 2), with the teacher's classifier-free guidance
folded in (Luo et al. 2023, LCM Algorithm 1). One group of a batch shares one grid index n:

    1. x_n     = x0 noised to t_n                                   (the solver's own forward process)
    2. x_{n+k} = Phi(x_n; t_n -> t_{n+k}), the teacher guided at w    (one step of the teacher's ODE solver: DDIM for a
                                                                     DDPM teacher, Euler / Heun for EDM or flow)
    3. loss    = d(f_theta(x_n, t_n), stopgrad f_theta-(x_{n+k}, t_{n+k}))

f is the student's consistency function (diffusion/samplers/consistency.py), which is x itself at the clean level
that ends the grid (the boundary condition), and theta- the EMA target network. The guided teacher is the project's
classifier-free guidance, out = uncond + w (cond - uncond) (LCM's omega is w - 1 here).

Distances d (per example): `l2`, the mean squared error; `pseudo_huber`, sqrt(||a - b||^2 + c^2) - c with
c = huber_c sqrt(dim) (Song & Dhariwal 2023, sec. 3.3: c = 0.00054 sqrt(d)), which is L2 near 0 and L1 far away,
so a few far-off targets early in distillation do not dominate the gradient.
"""

from __future__ import annotations

import torch

from diffusion.errors import check_choice
from diffusion.guidance import guided_denoiser

DISTANCES = ("l2", "pseudo_huber")


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, huber_c: float) -> torch.Tensor:
    """Per example [B]: sqrt(||a - b||^2 + c^2) - c, c = huber_c sqrt(dim) (Song & Dhariwal 2023)."""
    difference = (a.float() - b.float()).flatten(1)
    c = huber_c * difference.shape[1] ** 0.5
    return (difference.square().sum(dim=1) + c**2).sqrt() - c


def distance(a: torch.Tensor, b: torch.Tensor, kind: str, huber_c: float) -> torch.Tensor:
    check_choice("distill.distance", kind, DISTANCES)
    if kind == "pseudo_huber":
        return pseudo_huber(a, b, huber_c)
    return (a.float() - b.float()).square().flatten(1).mean(dim=1)


def network_denoiser(model, cond):
    """(x_t, t) -> model(x_t, t, cond) with a Python level t filled in per example (the samplers' denoise shape)."""
    def denoise(x_t: torch.Tensor, t) -> torch.Tensor:
        t = torch.full((x_t.shape[0],), t, device=x_t.device) if isinstance(t, (int, float)) else t
        return model(x_t, t, cond)

    return denoise


def consistency_loss(student, target, teacher, sampler, teacher_solver, x0: torch.Tensor, cond, uncond,
                     level, level_next, noise: torch.Tensor, guidance_scale: float, kind: str = "pseudo_huber",
                     huber_c: float = 0.00054) -> torch.Tensor:
    """Per-example consistency-distillation loss [B] for one group at grid levels (t_n, t_{n+k}).
    `sampler` is the student's ConsistencySampler (its f), `teacher_solver` the teacher's ODE sampler."""
    x_n = sampler.noised(x0, noise, level)  # 1
    with torch.no_grad():
        guided = guided_denoiser(None, teacher, cond, uncond, guidance_scale, objective=sampler.objective)
        x_next = teacher_solver.step(guided, x_n, level, level_next, {}, None).prev_sample  # 2
        aim, _ = sampler.consistency(network_denoiser(target, cond), x_next, level_next)
    prediction, _ = sampler.consistency(network_denoiser(student, cond), x_n, level)  # 3
    return distance(prediction, aim, kind, huber_c)
