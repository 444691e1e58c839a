"""The consistency student's function and its distillation, on cases with an exact answer: the boundary condition
of the parameterisation, the sigma each solver's level stands for, and the fixed point consistency distillation
reaches on Gaussian data with the exact teacher."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from closed_forms import gaussian_denoiser
from diffusion.errors import UserError
from diffusion.noise_schedules import NoiseSchedule
from diffusion.objectives import DDPMObjective, EDMObjective, FlowObjective
from diffusion.samplers import ConsistencySampler, EulerSampler
from diffusion.samplers.consistency import c_out, c_skip, consistency_function
from diffusion.training.consistency import consistency_loss, network_denoiser


@pytest.mark.parametrize("sigma_min", [0.0, 0.002, 0.5])
@pytest.mark.parametrize("sigma_data", [0.01, 0.5])
def test_the_boundary_condition_holds_for_any_network(sigma_min, sigma_data):
    """Song et al. 2023, App. C: c_skip(sigma_min) = 1, c_out(sigma_min) = 0, so f(x, sigma_min) = x whatever D is."""
    assert c_skip(sigma_min, sigma_data, sigma_min) == 1.0
    assert c_out(sigma_min, sigma_data, sigma_min) == 0.0
    x, anything = torch.randn(3, 2, 4, 4), 1e6 * torch.randn(3, 2, 4, 4)
    assert torch.equal(consistency_function(x, anything, sigma_min, sigma_data, sigma_min), x)
    # far from the boundary f is the network's clean estimate
    assert c_skip(1e4, sigma_data, sigma_min) < 1e-8 and abs(c_out(1e4, sigma_data, sigma_min) - 1) < 1e-8
    assert c_skip(math.inf, sigma_data) == 0.0 and c_out(math.inf, sigma_data) == 1.0


def samplers():
    ddpm = DDPMObjective(NoiseSchedule.from_name("cosine"), prediction_type="v")
    return {
        "ddim": (ConsistencySampler(ddpm, {"name": "ddim", "timestep_spacing": "trailing"}, grid_points=10),
                 lambda t: float(ddpm.sigmas[t])),
        "heun": (ConsistencySampler(EDMObjective(), {"name": "heun", "sigmas": "karras"}, grid_points=10),
                 lambda sigma: sigma),
        "flow_euler": (ConsistencySampler(FlowObjective(), {"name": "flow_euler"}, grid_points=10),
                       lambda t: t / (1 - t) if t < 1 else math.inf),
    }


@pytest.mark.parametrize("solver", ["ddim", "heun", "flow_euler"])
def test_the_student_reads_each_solvers_levels_as_their_sigma(solver):
    sampler, sigma_of = samplers()[solver]
    grid = sampler.training_grid()
    for level in grid:
        assert sampler.sigma(level) == pytest.approx(sigma_of(level), rel=1e-6)
    assert sampler.sigma(sampler.final_level) == 0.0

    def network(x, t):
        raise AssertionError("the boundary needs no network call")

    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(sampler.consistency(network, x, sampler.final_level)[0], x)
    assert set(sampler.levels(4)) <= set(grid) and sampler.levels(1) == [grid[0]] and sampler.levels(10) == grid
    with pytest.raises(UserError, match=r"steps must be an integer in \[1, 10\]"):
        sampler.levels(11)


class PerLevelAffine(nn.Module):
    """F(x_in, t) = a_n x_in + b_n at grid level n: it can represent any affine consistency function on the grid."""

    def __init__(self, model_times: list[float]):
        super().__init__()
        self.register_buffer("times", torch.tensor(model_times, dtype=torch.float64))
        self.a = nn.Parameter(torch.zeros(len(model_times)))
        self.b = nn.Parameter(torch.zeros(len(model_times)))

    def forward(self, x_in, t, cond=None):
        n = (t.double().reshape(-1, 1) - self.times).abs().argmin(dim=1)
        return self.a[n].view(-1, 1, 1, 1) * x_in + self.b[n].view(-1, 1, 1, 1)


def test_distillation_reaches_the_teachers_own_solution_on_gaussian_data():
    """Data N(mu, std^2), the exact denoiser as teacher, Euler on a 5-point Karras grid: the fixed point of
    consistency distillation (skip 1) is f(x, t_n) = the teacher's Euler chain from t_n to 0, affine in x here, so a
    per-level affine student must reach it from a wrong start."""
    torch.manual_seed(0)
    mu, std, n_points = 0.3, 0.6, 5
    objective = EDMObjective()
    sampler = ConsistencySampler(objective, {"name": "euler", "sigmas": "karras"}, grid_points=n_points,
                                 sigma_data=0.5, clip_sample=False)
    solver = EulerSampler(objective, sigmas="karras")
    exact = gaussian_denoiser(solver, mu, std)

    def teacher(x_in, t, cond):
        return exact(x_in, t)

    grid = sampler.training_grid() + [sampler.final_level]
    student = PerLevelAffine([objective.model_time(s) for s in grid[:-1]])
    target = PerLevelAffine([objective.model_time(s) for s in grid[:-1]]).requires_grad_(False)

    def chain(x, n):  # the teacher's own Euler solution from level n to the clean level
        for level, level_next in zip(grid[n:-1], grid[n + 1:]):
            x = solver.step(lambda x_in, t: exact(x_in, t), x, level, level_next, {}).prev_sample
        return x

    def worst_error():
        with torch.no_grad():
            x = torch.linspace(-3, 3, 7).view(-1, 1, 1, 1)
            return max(float((sampler.consistency(network_denoiser(student, None), s * x, level)[0]
                              - chain(s * x, n)).abs().max()) for n, (level, s) in enumerate(zip(grid, [80, 10, 2, 0.5, 0.1])))

    before = worst_error()
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    for step in range(150):
        x0 = mu + std * torch.randn(64, 1, 1, 1)
        loss = sum(consistency_loss(student, target, teacher, sampler, solver, x0, None, None, grid[n], grid[n + 1],
                                    torch.randn_like(x0), guidance_scale=1.0, kind="l2").mean() for n in range(n_points))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        target.load_state_dict(student.state_dict())  # the target network with mu = 0 (Song & Dhariwal 2023)
    after = worst_error()
    assert before > 0.5, before
    assert after < 0.02, (before, after)
