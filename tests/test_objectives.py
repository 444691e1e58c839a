"""The objectives' closed forms (EDM Table 1, the flow path, the DDPM sigma view), every solver on
problems with an exact answer, and flow / EDM training and inpainting end to end."""

import math

import numpy as np
import pytest
import torch

from diffusion.noise_schedules import NoiseSchedule
from diffusion.objectives import DDPMObjective, EDMObjective, FlowObjective
from diffusion.objectives.flow import shift_time
from diffusion.samplers import (DDIMSampler, DPMPP2MSampler, EulerSampler, FlowEulerSampler, FlowHeunSampler,
                                HeunSampler, sample_loop)
from closed_forms import gaussian_denoiser

SCHEDULE = NoiseSchedule.from_name("cosine", 1000)


def test_edm_preconditioning_is_table_1():
    edm = EDMObjective()
    s = torch.tensor([0.002, 0.1, 0.5, 1.0, 80.0], dtype=torch.float64)
    sd = 0.5
    torch.testing.assert_close(edm.c_skip(s), sd**2 / (s**2 + sd**2))
    torch.testing.assert_close(edm.c_out(s), s * sd / (s**2 + sd**2).sqrt())
    torch.testing.assert_close(edm.c_in(s), 1 / (s**2 + sd**2).sqrt())
    torch.testing.assert_close(edm.c_noise(s), s.log() / 4)
    # the loss weight makes the network's effective target unit-weighted: lambda c_out^2 = 1 (section 5)
    torch.testing.assert_close(edm.weight(s) * edm.c_out(s) ** 2, torch.ones_like(s))
    # at sigma = sigma_data, skip and output are mixed equally
    assert edm.c_skip(0.5) == pytest.approx(0.5) and edm.c_out(0.5) == pytest.approx(0.5 / 2**0.5)


def test_edm_loss_is_zero_for_the_ideal_network_output_and_its_input_has_unit_variance():
    edm = EDMObjective()
    gen = torch.Generator().manual_seed(0)
    x0 = 0.5 * torch.randn(4096, 1, 1, 1, generator=gen, dtype=torch.float64)  # std sigma_data
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    sigma = edm.draw_times(4096, gen)
    assert float(sigma.log().mean()) == pytest.approx(-1.2, abs=0.08) and float(sigma.log().std()) == pytest.approx(1.2, abs=0.08)
    x = edm.noisy(x0, noise, sigma)
    ideal = (x0 - edm.c_skip(sigma).view(-1, 1, 1, 1) * x) / edm.c_out(sigma).view(-1, 1, 1, 1)
    assert edm.loss(ideal, x0, noise, x, sigma).abs().max() < 1e-10
    # c_in scales the input to unit variance at every sigma (data of std sigma_data)
    assert float(edm.network_input(x, sigma).std()) == pytest.approx(1.0, abs=0.05)


def test_flow_path_target_times_and_shift():
    flow = FlowObjective(time_sampling="logit_normal")
    gen = torch.Generator().manual_seed(0)
    t = flow.draw_times(20000, gen)
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert float(torch.logit(t).mean()) == pytest.approx(0.0, abs=0.03)
    assert float(torch.logit(t).std()) == pytest.approx(1.0, abs=0.03)
    assert float(FlowObjective(time_sampling="uniform").draw_times(20000, gen).mean()) == pytest.approx(0.5, abs=0.01)
    assert shift_time(0.5, 3.0) == pytest.approx(0.75) and shift_time(1.0, 3.0) == 1.0 and shift_time(0.0, 3.0) == 0.0
    shifted = FlowObjective(time_sampling="uniform", shift=3.0).draw_times(20000, gen)
    assert float(shifted.median()) == pytest.approx(0.75, abs=0.01)
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([0.25, 0.9])
    x_t = flow.noisy(x0, noise, t)
    torch.testing.assert_close(x_t[0], 0.75 * x0[0] + 0.25 * noise[0])
    u = noise - x0  # the straight path's velocity is the target; from it the path's x0 is recovered
    assert flow.loss(u, x0, noise, x_t, t).abs().max() < 1e-10
    torch.testing.assert_close(flow.denoise(u, x_t, t), x0)


def test_ddpm_sigma_view_matches_the_schedule():
    for prediction in ("epsilon", "v", "x0"):
        ddpm = DDPMObjective(SCHEDULE, prediction)
        for t in (0, 17, 500, 999):
            a = float(SCHEDULE.alpha_bar(t))
            sigma = ((1 - a) / a) ** 0.5
            got_t, alpha = ddpm.from_sigma(sigma)
            assert got_t == pytest.approx(t, abs=1e-6) and alpha == pytest.approx(a**0.5, rel=1e-9)
        # pred_x0 from each parameterisation at a fractional timestep agrees with the schedule's identity
        x0, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
        t = 321.4
        a = ddpm.alpha_bar(t)
        x_t = a**0.5 * x0 + (1 - a) ** 0.5 * eps
        output = {"epsilon": eps, "x0": x0, "v": a**0.5 * eps - (1 - a) ** 0.5 * x0}[prediction]
        torch.testing.assert_close(ddpm.denoise(output, x_t, t), x0)


def perfect_denoiser(solver, target):
    """A 'network' whose pred_x0 is always `target`: every solver must land on it exactly."""
    objective = solver.objective

    def denoise(x_in, model_time):
        if isinstance(objective, FlowObjective):
            t = model_time / 1000
            return (x_in - target) / t  # u = (x_t - x0) / t
        if isinstance(objective, EDMObjective):
            sigma = math.exp(4 * model_time / 1000)
            x = x_in / objective.c_in(sigma)
            return (target - objective.c_skip(sigma) * x) / objective.c_out(sigma)
        return target  # DDPM with x0 prediction
    return denoise


SOLVERS = [
    EulerSampler(DDPMObjective(SCHEDULE, "x0"), sigmas="karras"),
    HeunSampler(DDPMObjective(SCHEDULE, "x0"), sigmas="exponential"),
    DPMPP2MSampler(DDPMObjective(SCHEDULE, "x0"), sigmas="default"), EulerSampler(EDMObjective()),
    HeunSampler(EDMObjective()), DPMPP2MSampler(EDMObjective()),
    FlowEulerSampler(FlowObjective()), FlowHeunSampler(FlowObjective(shift=3.0)),
]


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: repr(s)[:60])
def test_every_solver_lands_on_a_single_training_point(solver):
    target = torch.linspace(-1, 1, 48, dtype=torch.float64).reshape(1, 3, 4, 4)
    levels = solver.levels(7)
    noise = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = sample_loop(solver, perfect_denoiser(solver, target), solver.prior(noise, levels), levels)
    torch.testing.assert_close(out, target, atol=1e-9, rtol=0)


@pytest.mark.parametrize("kind,order", [(EulerSampler, 1), (HeunSampler, 2), (DPMPP2MSampler, 2)])
def test_solvers_converge_at_their_order_to_the_exact_gaussian_flow(kind, order):
    """For data N(mu, std^2) the probability-flow ODE is solved in closed form,
    x(0) = mu + (x(sigma_max) - mu) std / sqrt(std^2 + sigma_max^2): doubling the steps must cut the
    error by 2^order (Euler first order; Heun and DPM-Solver++(2M) second order)."""
    solver = kind(EDMObjective())
    mu, std = 0.3, 0.4
    noise = torch.randn(2000, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = []
    for steps in (20, 40, 80):
        levels = solver.levels(steps)
        x = solver.prior(noise, levels)
        exact = mu + (x - mu) * std / math.sqrt(std**2 + levels[0] ** 2)
        out = sample_loop(solver, gaussian_denoiser(solver, mu, std), x, levels)
        errors.append(float((out - exact).abs().max()))
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(0.75 * 2**order < r < 1.6 * 2**order for r in ratios), (errors, ratios)
    assert errors[-1] < (0.06 if order == 1 else 0.005)


def test_grids():
    euler = EulerSampler(DDPMObjective(SCHEDULE, "v"), sigmas="karras", rho=7.0)
    levels = np.array(euler.levels(10))
    lo, hi = euler.objective.sigma_range()
    assert levels[0] == pytest.approx(hi) and levels[-1] == pytest.approx(lo)
    ramp = levels ** (1 / 7)
    np.testing.assert_allclose(np.diff(ramp), np.diff(ramp)[0], rtol=1e-9)  # evenly spaced in sigma^(1/rho)
    expo = np.array(EulerSampler(DDPMObjective(SCHEDULE, "v"), sigmas="exponential").levels(10))
    np.testing.assert_allclose(np.diff(np.log(expo)), np.diff(np.log(expo))[0], rtol=1e-9)
    ddim_grid = DDIMSampler(DDPMObjective(SCHEDULE, "v"), timestep_spacing="trailing").levels(10)
    default = EulerSampler(DDPMObjective(SCHEDULE, "v"), sigmas="default", timestep_spacing="trailing").levels(10)
    assert [round(euler.objective.from_sigma(s)[0]) for s in default] == ddim_grid
    edm_levels = HeunSampler(EDMObjective()).levels(18)
    assert edm_levels[0] == pytest.approx(80.0) and edm_levels[-1] == pytest.approx(0.002)
    assert HeunSampler(EDMObjective()).img2img_levels(10, 0.3) == HeunSampler(EDMObjective()).levels(10)[7:]


def test_euler_is_ddim_in_sigma():
    """With the same network, Euler on the DDIM grid and DDIM (eta 0) give the same trajectory."""
    ddim = DDIMSampler(DDPMObjective(SCHEDULE, "v"), timestep_spacing="trailing")
    euler = EulerSampler(DDPMObjective(SCHEDULE, "v"), sigmas="default", timestep_spacing="trailing")
    network = lambda x, t: 0.5 * x * math.cos(float(torch.as_tensor(t).double().round()) / 300)  # noqa: E731
    noise = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = ddim.levels(8)
    a = noise
    for t, t_prev in zip(grid, ddim.following(grid)):  # DDIM's own step, in float64
        a = ddim.step(network, a, t, t_prev, {}).prev_sample
    levels = euler.levels(8)
    b = sample_loop(euler, network, euler.prior(noise, levels), levels)
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


# ---------------------------------------------------------------------------------------------- end to end


def test_flow_and_edm_train_and_sample_from_the_command_line(tmp_path):
    """`train.py objective=flow` then `sample.py sampler=flow_euler steps=...`, as a user types them (run in this
    process: the same Hydra command lines without the interpreter's start-up), and EDM with its default heun; each
    checkpoint records its objective and its objective's own sampler, and refuses DDIM."""
    from diffusion.checkpoint import load_checkpoint
    from diffusion.data.images import read_png_metadata
    from tiny import TINY_TRAIN, run_in_process

    for objective, sampler in (("flow", "flow_euler"), ("edm", "heun")):
        run = tmp_path / objective
        trained = run_in_process("train.py", *TINY_TRAIN, f"objective={objective}", f"hydra.run.dir={run}",
                                 f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
        assert trained.returncode == 0, trained.stderr[-2000:]
        ckpt = run / "checkpoints" / "last.ckpt"
        stored = load_checkpoint(ckpt)["config"]
        assert f"_target_: diffusion.samplers.{'FlowEulerSampler' if objective == 'flow' else 'HeunSampler'}" in stored
        drawn = run_in_process("sample.py", f"ckpt={ckpt}", "prompt=a red bird", f"sampler={sampler}", "steps=3",
                               "num_images=2", f"out_dir={tmp_path / (objective + '_out')}", "device=cpu", cwd=tmp_path)
        assert drawn.returncode == 0, drawn.stderr[-2000:]
        assert read_png_metadata(tmp_path / (objective + "_out") / "0000_seed0.png")["sampler"] == sampler
        refused = run_in_process("sample.py", f"ckpt={ckpt}", "prompt=x", "sampler=ddim", f"out_dir={tmp_path / 'no'}",
                                 "device=cpu", cwd=tmp_path)
        assert refused.returncode == 2 and f"does not fit this model's objective ({objective})" in refused.stderr
        assert "Traceback" not in refused.stderr


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler", "heun", "dpmpp_2m"])
def test_inpainting_keeps_the_known_region_exactly(tiny_checkpoint, sampler):
    """Pixel space: the kept half of the init image comes back bit for bit, the repainted half changes."""
    from omegaconf import OmegaConf

    from diffusion.loading import load_model
    from diffusion.pipeline import generate_images

    loaded = load_model(tiny_checkpoint)
    node = OmegaConf.load(f"conf/sampler/{sampler}.yaml")
    sampler = loaded.sampler(node)
    shape = tuple(loaded.payload["data"]["shape"])
    init = torch.linspace(-0.8, 0.8, math.prod(shape)).reshape(shape)
    mask = torch.zeros(1, *shape[1:])
    mask[..., : shape[2] // 2] = 1  # repaint the left half
    images = generate_images(loaded.model, sampler, ["a red bird"] * 2, [0, 1], shape=shape, steps=4,
                             guidance_scale=2.0, init=init, strength=1.0, mask=mask)
    keep = mask.expand(2, *shape) == 0
    torch.testing.assert_close(images[keep], init.expand(2, *shape)[keep], atol=1e-6, rtol=0)
    assert (images[~keep] - init.expand(2, *shape)[~keep]).abs().mean() > 0.05
