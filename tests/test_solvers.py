"""Euler, Heun, DPM-Solver++(2M) and flow Euler/Heun against diffusers 0.42 over whole trajectories,
and the closed forms they must reproduce.

The reference schedulers are driven by their own loop (scale_model_input, step) with the same
deterministic stand-in network as ours; every intermediate sample is compared. Conventions that
differ, and how the tests handle them:
- diffusers keeps its sigma grids in float32; the tests hand it our float64 grid after checking that
  its own grid agrees with ours to float32 precision (the grid is ours, closed form in sigmas.py).
- EulerDiscreteScheduler casts the sample to float32 inside `step`, so its trajectory is float32
  whatever it is given; DPMSolverMultistep with Karras sigmas hands the network timesteps rounded
  to integers (we give the exact fractional t(sigma)). The stand-in network reads round(t), so the
  two see the same inputs, and the solvers' own arithmetic is what is compared.
"""

import math

import numpy as np
import pytest
import torch

from diffusion.errors import UserError
from diffusion.noise_schedules import NoiseSchedule
from diffusion.objectives import DDPMObjective, EDMObjective, FlowObjective
from diffusion.samplers import (DPMPP2MSampler, EulerSampler, FlowEulerSampler, FlowHeunSampler, HeunSampler,
                                karras_sigmas, sample_loop)

diffusers = pytest.importorskip("diffusers")

REF_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}
SHAPE = (2, 3, 8, 8)


def stand_in_network(x_in, t, rounded=True):
    """A smooth, deterministic 'network' of (input, timestep); t is read as round(t) (see the module doc),
    except for the flow samplers, where both sides pass the same fractional time."""
    t = torch.as_tensor(t).double()
    t = float(t.round() if rounded else t)
    gen = torch.Generator().manual_seed(7)
    bias = torch.randn(SHAPE[1:], generator=gen, dtype=torch.float64)
    return 0.3 * x_in * math.cos(t / 400) + 0.2 * torch.sin(bias + t / 150)


def start(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def our_trajectory(solver, steps, x, rounded=True):
    """Our samples after each step (sigma view), and the grid it ran on."""
    levels = solver.levels(steps)
    seen = []
    sample_loop(solver, lambda x_in, t: stand_in_network(x_in, t, rounded), x, levels,
                callback=lambda info: seen.append(info.prev_sample))
    return seen, levels


def ref_config(prediction_type):
    return dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                prediction_type=REF_PREDICTION[prediction_type])


def ref_trajectory(ref, x, every, rounded=True):
    """diffusers' own loop; `every(i)` says which step ends one of our steps (Heun has two per step)."""
    seen = []
    for i, t in enumerate(ref.timesteps):
        scale = getattr(ref, "scale_model_input", None)  # the flow schedulers have none: x is the input
        out = stand_in_network(scale(x, t) if scale else x, t, rounded)
        x = ref.step(out, t, x).prev_sample.double()
        if every(i):
            seen.append(x)
    return seen


def compare(ours, theirs, scales, tol):
    assert len(ours) == len(theirs)
    for i, (a, b, s) in enumerate(zip(ours, theirs, scales)):
        error = ((a - b) * s).abs().max().item()
        assert error <= tol, f"step {i}: max |difference| {error:.2e} > {tol:.0e}"


SCHEDULE = NoiseSchedule.from_name("scaled_linear", 1000)


def vp_scale(sigma):  # sigma view -> the x_t the network sees
    return 1 / (1 + sigma**2) ** 0.5


@pytest.mark.parametrize("prediction_type", ["epsilon", "v"])
@pytest.mark.parametrize("steps", [5, 25])
@pytest.mark.parametrize("sigmas,spacing", [("default", "trailing"), ("default", "linspace"), ("karras", "linspace")])
def test_euler_matches_diffusers(prediction_type, steps, sigmas, spacing):
    ours = EulerSampler(DDPMObjective(SCHEDULE, prediction_type), sigmas=sigmas, timestep_spacing=spacing)
    ref = diffusers.EulerDiscreteScheduler(**ref_config(prediction_type), timestep_spacing=spacing,
                                           use_karras_sigmas=sigmas == "karras")
    ref.alphas_cumprod = SCHEDULE.alphas_cumprod.clone()
    ref.set_timesteps(steps)
    levels = ours.levels(steps)
    times = [ours.objective.from_sigma(s)[0] for s in levels]
    if (sigmas, spacing) == ("default", "linspace"):
        # a convention: diffusers' Euler keeps linspace's fractional timesteps (sigma linear in t between
        # them); ours rounds them to integers as DDIM's grid does. Check the closed form, then hand it ours.
        np.testing.assert_allclose(times, np.linspace(0, 999, steps).round()[::-1], atol=1e-6)
        ref.timesteps = torch.tensor(times, dtype=torch.float64)
    else:
        np.testing.assert_allclose(ref.sigmas[:-1].numpy(), levels, rtol=2e-6)  # the grid, to float32
        np.testing.assert_allclose(ref.timesteps.numpy(), times, atol=2e-3)
    ref.sigmas = torch.tensor(levels + [0.0], dtype=torch.float64)
    x = start()
    got, _ = our_trajectory(ours, steps, x)
    expected = ref_trajectory(ref, x, lambda i: True)
    # compared on the scale the network sees (x_t = x / sqrt(1 + sigma^2)); Euler's step is float32
    compare(got, expected, [vp_scale(s) for s in levels[1:] + [0.0]], 1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v"])
@pytest.mark.parametrize("steps", [5, 25])
@pytest.mark.parametrize("sigmas", ["default", "karras"])
def test_heun_matches_diffusers(prediction_type, steps, sigmas):
    spacing = "trailing" if sigmas == "default" else "linspace"
    ours = HeunSampler(DDPMObjective(SCHEDULE, prediction_type), sigmas=sigmas, timestep_spacing=spacing)
    ref = diffusers.HeunDiscreteScheduler(**ref_config(prediction_type), timestep_spacing=spacing,
                                          use_karras_sigmas=sigmas == "karras")
    ref.alphas_cumprod = SCHEDULE.alphas_cumprod.clone()
    ref.set_timesteps(steps)
    levels = ours.levels(steps)
    ref_levels = torch.cat([ref.sigmas[:1], ref.sigmas[1:-1:2]]).numpy()
    np.testing.assert_allclose(ref_levels, levels, rtol=2e-6)
    grid = torch.tensor(levels + [0.0], dtype=torch.float64)
    ref.sigmas = torch.cat([grid[:1], grid[1:-1].repeat_interleave(2), grid[-1:]])
    x = start()
    got, _ = our_trajectory(ours, steps, x)
    last = len(ref.timesteps) - 1
    expected = ref_trajectory(ref, x, lambda i: i % 2 == 1 or i == last)
    compare(got, expected, [vp_scale(s) for s in levels[1:] + [0.0]], 1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v"])
@pytest.mark.parametrize("steps", [5, 25])
@pytest.mark.parametrize("sigmas", ["karras", "default"])
def test_dpmpp_2m_matches_diffusers(prediction_type, steps, sigmas):
    spacing = "trailing"
    ours = DPMPP2MSampler(DDPMObjective(SCHEDULE, prediction_type), sigmas=sigmas, timestep_spacing=spacing)
    ref = diffusers.DPMSolverMultistepScheduler(**ref_config(prediction_type), algorithm_type="dpmsolver++",
                                                solver_order=2, timestep_spacing=spacing,
                                                use_karras_sigmas=sigmas == "karras", final_sigmas_type="zero")
    ref.alphas_cumprod = SCHEDULE.alphas_cumprod.clone()
    ref.alpha_t, ref.sigma_t = ref.alphas_cumprod.sqrt(), (1 - ref.alphas_cumprod).sqrt()
    ref.lambda_t = ref.alpha_t.log() - ref.sigma_t.log()
    ref.set_timesteps(steps)
    levels = ours.levels(steps)
    np.testing.assert_allclose(ref.sigmas[:-1].numpy(), levels, rtol=2e-6)
    ref.sigmas = torch.tensor(levels + [0.0], dtype=torch.float64)
    x = start()
    got, _ = our_trajectory(ours, steps, x)
    # diffusers' DPM-Solver keeps the variance-preserving x_t: hand it ours as x_t, compare as x_t
    expected = ref_trajectory(ref, x * vp_scale(levels[0]), lambda i: True)
    scales = [vp_scale(s) for s in levels[1:] + [0.0]]
    compare([g * s for g, s in zip(got, scales)], expected, [1.0] * steps, 1e-5)


@pytest.mark.parametrize("steps", [5, 25])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_matches_diffusers(steps, shift):
    ours = FlowEulerSampler(FlowObjective(shift=shift))
    ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(steps)
    levels = ours.levels(steps)
    if shift == 1.0:  # diffusers shifts its smallest time twice (in __init__ and set_timesteps); with shift 1 the grids agree
        np.testing.assert_allclose(ref.sigmas[:-1].numpy(), levels, rtol=2e-6)
    ref.sigmas = torch.tensor(levels + [0.0], dtype=torch.float64)
    ref.timesteps = ref.sigmas[:-1] * 1000
    x = start()
    got, _ = our_trajectory(ours, steps, x, rounded=False)
    compare(got, ref_trajectory(ref, x, lambda i: True, rounded=False), [1.0] * steps, 1e-5)


@pytest.mark.parametrize("steps", [5, 25])
def test_flow_heun_matches_diffusers(steps):
    ours = FlowHeunSampler(FlowObjective(shift=1.0))
    ref = diffusers.FlowMatchHeunDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    ref.set_timesteps(steps)
    levels = ours.levels(steps)
    np.testing.assert_allclose(torch.cat([ref.sigmas[:1], ref.sigmas[1:-1:2]]).numpy(), levels, rtol=2e-6)
    grid = torch.tensor(levels + [0.0], dtype=torch.float64)  # hand it our float64 grid, interleaved as its own
    ref.sigmas = torch.cat([grid[:1], grid[1:-1].repeat_interleave(2), grid[-1:]])
    ref.timesteps = torch.cat([grid[:1], grid[1:-1].repeat_interleave(2)]) * 1000
    x = start()
    got, _ = our_trajectory(ours, steps, x, rounded=False)
    last = len(ref.timesteps) - 1
    compare(got, ref_trajectory(ref, x, lambda i: i % 2 == 1 or i == last, rounded=False), [1.0] * steps, 1e-5)
