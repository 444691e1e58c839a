"""UniPC (bh2) and DPM-Solver++(2M) SDE against diffusers 0.42 over whole trajectories, and UniPC's
order on the closed-form Gaussian flow.

The reference schedulers run their own loop (step after step) with the deterministic stand-in network of
tests/test_solvers.py, in float64; every intermediate sample is compared. Conventions that differ, and how
the tests handle them (as tests/test_solvers.py does):
- diffusers keeps its sigma grids in float32; the tests check its grid against ours to float32 precision,
  then hand it our float64 grid.
- both schedulers keep the variance-preserving x_t = x / sqrt(1 + sigma^2); they are handed ours as x_t and
  compared as x_t. The stand-in network reads round(t), so both sides see the same inputs.
- DPMSolverMultistepScheduler does its step in float32 (it upcasts the sample), so the SDE comparison is at
  float32 precision: on the epsilon stand-in the sample grows to |x_t| ~ 35 and float32 rounding alone
  accumulates to ~1.4e-5 over 25 steps, so the SDE error is measured relative to max(1, max |x_t|)
  (UniPC stays in float64 and is compared absolutely). Its noise is handed in as `variance_noise`, the same
  per-image draws our loop makes from the same generators.
"""

import math

import numpy as np
import pytest
import torch

from diffusion.errors import UserError
from diffusion.noise_schedules import NoiseSchedule
from diffusion.objectives import DDPMObjective, EDMObjective
from diffusion.samplers import DPMPP2MSDESampler, UniPCSampler, per_image_normal, sample_loop
from closed_forms import gaussian_denoiser

diffusers = pytest.importorskip("diffusers")

REF_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction"}
SHAPE = (2, 3, 8, 8)
SCHEDULE = NoiseSchedule.from_name("scaled_linear", 1000)


def stand_in_network(x_in, t):
    """A smooth, deterministic 'network' of (input, round(timestep))."""
    t = float(torch.as_tensor(t).double().round())
    bias = torch.randn(SHAPE[1:], generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return 0.3 * x_in * math.cos(t / 400) + 0.2 * torch.sin(bias + t / 150)


def vp_scale(sigma):  # sigma view -> the x_t the network sees
    return 1 / (1 + sigma**2) ** 0.5


def reference(scheduler_class, prediction_type, steps, levels, **options):
    ref = scheduler_class(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, prediction_type=REF_PREDICTION[prediction_type], timestep_spacing="trailing",
                          final_sigmas_type="zero", **options)
    ref.alphas_cumprod = SCHEDULE.alphas_cumprod.clone()  # ours, float64, as tests/test_solvers.py does
    ref.alpha_t, ref.sigma_t = ref.alphas_cumprod.sqrt(), (1 - ref.alphas_cumprod).sqrt()
    ref.lambda_t = ref.alpha_t.log() - ref.sigma_t.log()
    ref.set_timesteps(steps)
    np.testing.assert_allclose(ref.sigmas[:-1].numpy(), levels, rtol=2e-6)  # the grid, to float32
    ref.sigmas = torch.tensor(levels + [0.0], dtype=torch.float64)
    return ref


def max_error(sampler, ref, steps, generators=None, noises=None, relative=False):
    """Max |ours - diffusers| over every step's x_t (relative: divided by max(1, max |x_t|) of that step)."""
    levels = sampler.levels(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = []
    sample_loop(sampler, stand_in_network, x, levels, generators,
                callback=lambda info: ours.append(info.prev_sample * vp_scale(info.level_next)))
    x_t, errors = x * vp_scale(levels[0]), []
    for i, t in enumerate(ref.timesteps):
        extra = {} if noises is None else {"variance_noise": noises[i]}
        x_t = ref.step(stand_in_network(x_t, t), t, x_t, **extra).prev_sample.double()
        scale = max(1.0, x_t.abs().max().item()) if relative else 1.0
        errors.append((ours[i] - x_t).abs().max().item() / scale)
    assert len(ours) == len(errors) == steps
    return max(errors)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v"])
@pytest.mark.parametrize("steps", [5, 25])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_matches_diffusers(prediction_type, steps, order):
    ours = UniPCSampler(DDPMObjective(SCHEDULE, prediction_type), order=order)
    ref = reference(diffusers.UniPCMultistepScheduler, prediction_type, steps, ours.levels(steps),
                    solver_order=order, solver_type="bh2", predict_x0=True, lower_order_final=True)
    error = max_error(ours, ref, steps)
    assert error <= 1e-5, f"max |difference| {error:.2e}"


@pytest.mark.parametrize("prediction_type", ["epsilon", "v"])
@pytest.mark.parametrize("steps", [5, 25])
def test_dpmpp_2m_sde_matches_diffusers(prediction_type, steps):
    ours = DPMPP2MSDESampler(DDPMObjective(SCHEDULE, prediction_type))
    ref = reference(diffusers.DPMSolverMultistepScheduler, prediction_type, steps, ours.levels(steps),
                    algorithm_type="sde-dpmsolver++", solver_order=2)
    seeds = [11, 12]  # one generator per image, as sample_loop draws
    mirror = [torch.Generator().manual_seed(s) for s in seeds]
    noises = [per_image_normal(mirror, SHAPE[1:], "cpu") for _ in range(steps)]
    error = max_error(ours, ref, steps, [torch.Generator().manual_seed(s) for s in seeds], noises, relative=True)
    assert error <= 1e-5, f"max |difference| / max(1, |x_t|) {error:.2e}"


def gaussian_errors(solver, steps_list):
    mu, std = 0.3, 0.4
    noise = torch.randn(2000, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = []
    for steps in steps_list:
        levels = solver.levels(steps)
        x = solver.prior(noise, levels)
        exact = mu + (x - mu) * std / math.sqrt(std**2 + levels[0] ** 2)
        errors.append(float((sample_loop(solver, gaussian_denoiser(solver, mu, std), x, levels) - exact).abs().max()))
    return errors


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_converges_at_its_order_to_the_exact_gaussian_flow(order):
    """For data N(mu, std^2) the probability-flow ODE has a closed form (tests/test_objectives.py). UniP-p with
    the corrector UniC-p is of order p + 1 (Zhao et al. 2023, Theorem 3.1): doubling the steps must cut the
    error by about 2^(p + 1). Measured over 20 -> 40 -> 80 steps: 3.8, 4.0 (p = 1); 9.1, 8.7 (p = 2);
    29.9, 14.6 (p = 3, not yet asymptotic at 20 steps, so only the last ratio has an upper bound)."""
    errors = gaussian_errors(UniPCSampler(EDMObjective(), order=order), (20, 40, 80))
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(0.75 * 2 ** (order + 1) < r for r in ratios), (errors, ratios)
    assert ratios[-1] < 1.6 * 2 ** (order + 1), (errors, ratios)
    assert errors[-1] < (0.01 if order == 1 else 1e-3)


def test_unipc_refuses_an_order_it_does_not_have():
    with pytest.raises(UserError, match="order"):
        UniPCSampler(EDMObjective(), order=4)
