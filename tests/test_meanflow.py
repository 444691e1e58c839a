"""MeanFlow / iMF (diffusion/objectives/meanflow.py, diffusion/samplers/meanflow.py): the identity and both losses on
Gaussian data where the average velocity is known in closed form, the one-step sampler on the exact field, a tiny
network trained to one-step samples of the right mean and variance, the JVP through both backbones, and the
bad inputs of train.py / sample.py."""

import pytest
import torch
from torch import nn

from closed_forms import GaussianFlow
from diffusion.objectives import MeanFlowObjective
from diffusion.objectives.meanflow import average_velocity_and_derivative
from diffusion.samplers import MeanFlowSampler, sample_loop, start
from tiny import TINY_TRAIN, run_in_process, tiny_train_cfg

MU, S = 0.7, 0.5  # the data N(MU, S^2 I)
SCALE = 1000.0  # the network's time units (objective.timestep_scale)


def exact_network(flow: GaussianFlow):
    """The exact average velocity as a MeanFlow network: network(z, 1000 t, r=1000 r) -> u(z, r, t); at r = t the
    limit v(z, t). Differentiable in z and in the time (the objective's JVP runs through it)."""

    def network(z, time, unconditional=False, rows=None, r=None, guidance=None):
        shape = (-1,) + (1,) * (z.dim() - 1)
        t, r = (time / SCALE).reshape(shape), (r / SCALE).reshape(shape)
        gap = t - r
        jump = flow.average_velocity(z, r, t.where(gap > 0, t + 1))  # t + 1: any t != r where the jump is unused
        return torch.where(gap > 0, jump, flow.velocity(z, t))

    return network


def test_the_jvp_target_is_the_meanflow_identity_of_the_exact_average_velocity():
    flow = GaussianFlow(MU, S)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(64, generator=gen, dtype=torch.float64)
    r = t * torch.rand(64, generator=gen, dtype=torch.float64)
    network = exact_network(flow)
    u_fn = lambda z_in, time: network(z_in, time, r=SCALE * r)  # noqa: E731
    v = flow.velocity(z, t[:, None])
    u, du_dt = average_velocity_and_derivative(u_fn, z, SCALE * t, v, SCALE)  # MF eq. 8: tangents (v, 0, 1)
    torch.testing.assert_close(u, flow.average_velocity(z, r[:, None], t[:, None]))
    # MF eq. 6: u = v - (t - r) du/dt, and iMF's compound velocity V = u + (t - r) du/dt is v itself
    torch.testing.assert_close(v - (t - r)[:, None] * du_dt, u, atol=1e-10, rtol=1e-10)
    # the total derivative checked against a finite difference along the exact ODE through z
    h = 1e-5
    along = lambda dt: flow.average_velocity(z + dt * v, r[:, None], t[:, None] + dt)  # noqa: E731
    torch.testing.assert_close(du_dt, (along(h) - along(-h)) / (2 * h), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("loss", ["imf", "mf"])
def test_both_losses_at_the_exact_network_leave_only_the_closed_form_noise(loss):
    """At u = the exact average velocity, iMF's v-loss is ||v(z_t) - (eps - x0)||^2, whose mean is Var(eps - x0 | z_t);
    MF's error (I - (t - r) du/dz)(v - (eps - x0)) is that scaled by (sigma_r / sigma_t)^2 (du/dz is a multiple of I)."""
    flow = GaussianFlow(MU, S)
    objective = MeanFlowObjective(loss=loss, equal_fraction=0.0, guidance_max=1.0, adaptive_power=0.0)
    gen = torch.Generator().manual_seed(1)
    n, t, r = 4000, 0.6, 0.2
    x0 = MU + S * torch.randn(n, 4, generator=gen, dtype=torch.float64)
    noise = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    times = torch.tensor([t, r, 1.0], dtype=torch.float64).expand(n, 3)
    per_example = objective.training_loss(exact_network(flow), x0, noise, times)
    expected = flow.conditional_velocity_variance(t) * ((flow.sigma(r) / flow.sigma(t)) ** 2 if loss == "mf" else 1)
    assert float(per_example.mean()) == pytest.approx(expected, rel=0.05)


def test_guidance_folds_into_the_target_and_reaches_the_network():
    objective = MeanFlowObjective(guidance_max=4.0, adaptive_power=0.0)
    seen = []

    def network(z, time, unconditional=False, rows=None, r=None, guidance=None):
        seen.append((unconditional, guidance))
        return torch.full_like(z, -1.0 if unconditional else 2.0)

    z, v_c, w = torch.zeros(3, 2), torch.ones(3, 2), torch.tensor([1.0, 2.0, 4.0])
    guided = objective.guided_velocity(network, z, torch.full((3,), 500.0), v_c, w)
    torch.testing.assert_close(guided, (w * 1 + (1 - w) * -1)[:, None].expand(3, 2))  # w v_c + (1 - w) v_uncond
    assert seen[0][0] and torch.equal(seen[0][1], torch.ones(3))  # the unconditional field at w = 1
    times = objective.draw_times(20000, torch.Generator().manual_seed(0))
    t, r, w = times.unbind(1)
    assert (r < t).all()  # which rows train at r = t is positional (moving_rows)
    assert float(w.min()) >= 1 and float(w.max()) <= 4 and float(w.mean()) == pytest.approx(2.5, abs=0.03)


def test_the_rows_at_r_equal_t_skip_the_jvp_and_lose_nothing():
    """Rows [k, B) train at r = t with one ordinary call: their loss and the gradient equal those of the JVP path
    (whose (t - r) du/dt is 0 there); k is a fixed share of the micro-batch, at least one row."""
    assert [MeanFlowObjective(equal_fraction=f).moving_rows(n) for f, n in
            [(0.75, 32), (0.75, 2), (0.75, 1), (1.0, 8), (0.0, 8), (0.5, 5)]] == [8, 1, 1, 0, 8, 3]
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 16), nn.SiLU(), nn.Linear(16, 2)).double()
    calls = []

    def network(z, time, unconditional=False, rows=slice(None), r=None, guidance=None):
        calls.append((rows, z.shape[0]))
        t = time[:, None] / SCALE
        return mlp(torch.cat([z, t, t - r[:, None] / SCALE, guidance[:, None] - float(unconditional)], dim=1))

    gen = torch.Generator().manual_seed(4)
    x0, noise = (torch.randn(8, 2, generator=gen, dtype=torch.float64) for _ in range(2))
    split = MeanFlowObjective(equal_fraction=0.75, guidance_max=3.0)
    times = split.draw_times(8, gen)
    losses = split.training_loss(network, x0, noise, times)
    assert [c for c in calls if c[0] != slice(None)] == [(slice(0, 2), 2)] * 2 + [(slice(2, 8), 6)]  # tangent, JVP, rest
    gradient = torch.autograd.grad(losses.sum(), list(mlp.parameters()))
    everyone = times.clone()
    everyone[2:, 1] = everyone[2:, 0]  # the same draws with r = t spelled out, every row through the JVP
    reference = MeanFlowObjective(equal_fraction=0.0, guidance_max=3.0).training_loss(network, x0, noise, everyone)
    torch.testing.assert_close(losses, reference, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(gradient, torch.autograd.grad(reference.sum(), list(mlp.parameters()))):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2])
def test_the_sampler_on_the_exact_average_velocity_lands_on_the_exact_flow_map(steps):
    flow = GaussianFlow(MU, S)
    sampler = MeanFlowSampler(MeanFlowObjective())
    network = exact_network(flow)
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def denoise(x, time, r):
        return network(x, torch.full((x.shape[0],), time, dtype=torch.float64), r=torch.full((x.shape[0],), r, dtype=torch.float64))

    x, levels = start(sampler, noise, steps)
    assert levels == [1.0] if steps == 1 else levels == [1.0, 0.5]
    torch.testing.assert_close(sample_loop(sampler, denoise, x, levels), MU + S * noise)  # z_0 = mu + s z_1


@pytest.mark.slow  # ~60 CPU-seconds at one torch thread (6000 steps of forward-mode AD through a small MLP)
def test_a_tiny_network_trained_with_imf_draws_one_step_samples_of_the_right_mean_and_variance():
    """2-D Gaussian data: one step of the trained network must give mean MU and std S. (One Euler step of the exact
    instantaneous velocity, what plain flow matching offers at 1 step, gives std 0 here: z_0 = mu.)

    Two things this needs, found by probing the learnt one-step maps at many (r, t):
    - times that cover both ends: logit-normal(0, 3), not MF's (-0.4, 1). With data this narrow (std 0.3 against noise
      std 1) the velocity's slope swings from -1 at t = 0 to +0.2 by t = 0.1, and MF's density visits t < 0.05 in ~1%
      of draws: u(z, r ~ 0, t) then stays near the instantaneous v(z, t) (std 0.17-0.20 where 0.30 is right);
    - enough steps for the longest jumps. The identity u + (t - r) du/dt = v also holds for u + C / (t - r) (C constant
      along the flow), an error pinned down only near r = t, so errors at large t - r die out last: after 3000 steps
      the one-step std is 0.43 / 0.21 (of 0.5 / 0.3) while u over [0, 0.5] is already right; after 6000, 0.52 / 0.29."""
    torch.manual_seed(0)
    mu, s = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 0.3])
    objective = MeanFlowObjective(guidance_max=1.0, adaptive_power=0.0, logit_mean=0.0, logit_std=3.0)
    mlp = nn.Sequential(nn.Linear(4, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))

    def network(z, time, unconditional=False, rows=None, r=None, guidance=None):
        t = (time / SCALE).to(z.dtype)[:, None]
        return mlp(torch.cat([z, t, t - (r / SCALE).to(z.dtype)[:, None]], dim=1))

    steps = 6000
    optimizer = torch.optim.Adam(mlp.parameters(), lr=3e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        x0 = mu + s * torch.randn(256, 2, generator=gen)
        times = objective.draw_times(256, gen)
        loss = objective.training_loss(network, x0, torch.randn(256, 2, generator=gen), times).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
    with torch.no_grad():
        noise = torch.randn(4000, 2, generator=gen)
        samples = noise - network(noise, torch.full((4000,), SCALE), r=torch.zeros(4000))  # z_0 = z_1 - u(z_1, 0, 1)
    torch.testing.assert_close(samples.mean(0), mu, atol=0.06, rtol=0)
    torch.testing.assert_close(samples.std(0), s, atol=0.06, rtol=0)


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_the_jvp_runs_through_both_backbones_and_the_switch_is_off_by_default(backbone):
    from models.dit import DiT
    from models.unet import UNet

    def make(**extra):
        torch.manual_seed(0)
        if backbone == "unet":
            return UNet(3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=8,
                        context_dim=8, **extra)
        return DiT(3, patch_size=4, hidden_size=16, depth=1, num_heads=2, context_dim=8, **extra)

    assert not any("extra_time" in key for key in make().state_dict())  # off: the old networks, unchanged
    network = make(extra_time_inputs=("r", "guidance")).double()  # float64 (its time sinusoids stay float32)
    for p in network.parameters():  # zero-initialised outputs would make every derivative 0
        nn.init.normal_(p, std=0.2)
    gen = torch.Generator().manual_seed(3)
    z, v = (torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    mask = torch.tensor([[True, True, False], [True, True, True]])  # padded text: the masked attention path too
    cond = {"context": torch.randn(2, 3, 8, generator=gen, dtype=torch.float64), "context_mask": mask,
            "r": torch.tensor([100.0, 400.0]), "guidance": torch.tensor([1.0, 3.0])}
    u_fn = lambda z_in, time: network(z_in, time, cond)  # noqa: E731
    time = torch.tensor([600.0, 900.0], dtype=torch.float64)
    u, du_dt = average_velocity_and_derivative(u_fn, z, time, v, SCALE)
    h = 1e-4  # central differences in t (1000 model-time units per unit; the sinusoids are float32: not finer)
    with torch.no_grad():
        difference = (u_fn(z + h * v, time + SCALE * h) - u_fn(z - h * v, time - SCALE * h)) / (2 * h)
    torch.testing.assert_close(du_dt, difference, atol=1e-2 * float(difference.abs().max()), rtol=0)
    changed = dict(cond, r=torch.tensor([500.0, 400.0]), guidance=torch.tensor([2.0, 3.0]))
    with torch.no_grad():  # r and w reach the output (of the first example only, the one whose inputs changed)
        delta = (network(z, time, changed) - u).abs().flatten(1).amax(1)
    assert delta[0] > 1e-3 and delta[1] < 1e-5


def test_meanflow_trains_samples_in_one_and_two_steps_and_refuses_what_does_not_fit(tmp_path, tiny_checkpoint):
    from diffusion.training import train

    ckpt = train(tiny_train_cfg(tmp_path / "run", "objective=meanflow", "trainer.max_steps=1", "trainer.batch_size=2"))
    for steps in (1, 2):
        result = run_in_process("sample.py", f"ckpt={ckpt}", "prompt=a red bird", "num_images=2", f"steps={steps}",
                                "guidance_scale=2.5", f"out_dir={tmp_path / f'steps{steps}'}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"({steps} network calls)" in result.stdout and (tmp_path / f"steps{steps}" / "grid.png").is_file()
    sample = ["sample.py", f"ckpt={ckpt}", "prompt=a red bird", f"out_dir={tmp_path / 'never'}"]
    train_tiny = ["train.py", *TINY_TRAIN, f"hydra.run.dir={tmp_path / 'bad_runs'}", "objective=meanflow"]
    cases = [
        ((*sample, "sampler=flow_euler"), "sampler flow_euler does not fit this model's objective (meanflow); use sampler=meanflow"),
        ((*sample[:1], f"ckpt={tiny_checkpoint}", *sample[2:], "sampler=meanflow"),
         "sampler meanflow does not fit this model's objective (ddpm); use sampler=ddim"),
        ((*sample, "guidance_scale=9"), "guidance_scale=9 is outside what this MeanFlow model was trained for: use "
                                        "guidance_scale in [1, 5]"),
        ((*sample, "guidance=apg"), "guidance=apg: a MeanFlow model takes guidance_scale as an input"),
        ((*sample, "steps=0"), "steps=0: use an integer >= 1"),  # the schema (diffusion/schema.py)
        (("train.py", *[o for o in train_tiny[1:] if not o.startswith("model.")], "model=mmdit_tiny", "model.hidden_size=32",
          "model.depth=1", "model.num_heads=2"), "objective=meanflow needs a backbone that also embeds r and guidance"),
        ((*train_tiny, "objective.loss=mse"), "objective.loss"),
        ((*train_tiny, "objective.guidance_max=0.5"), "objective.guidance_max must be >= 1"),
    ]
    failures = []
    for args, fragment in cases:
        result = run_in_process(args[0], *args[1:], cwd=tmp_path)
        last = ([line for line in result.stderr.splitlines() if line.strip()] or [""])[-1]
        if result.returncode != 2 or "Traceback" in result.stderr or not last.startswith("error:") or fragment not in last:
            failures.append(f"{' '.join(args[-2:])}: exit {result.returncode}, last line {last!r}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "never").exists() or not any((tmp_path / "never").glob("*.png"))
