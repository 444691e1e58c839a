"""Post-hoc EMA (EDM2): the closed forms against numbers, the power-function EMA against its explicit weighted
average, the least-squares reconstruction against directly tracked profiles, and a real tiny run end to end."""

import numpy as np
import pytest
import torch
from torch import nn

from diffusion import checkpoint as ckpt
from diffusion import generate_images, load_model
from diffusion.errors import UserError
from diffusion.training import train
from diffusion.training.posthoc_ema import (PowerFunctionEMA, gamma_to_sigma_rel, power_profile_inner_product,
                                            reconstruct, reconstruction_coefficients, sigma_rel_to_gamma)
from tiny import run_in_process, tiny_train_cfg


def test_gamma_and_sigma_rel_round_trip_and_match_edm2s_pair():
    # EDM2's two tracked profiles: sigma_rel 0.05 is gamma 16.97 (the narrow one), 0.10 is gamma 6.94
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    for sigma_rel in (0.01, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.28):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-10)
    for bad in (0.0, -0.1, 0.29, 1.0, float("nan")):
        with pytest.raises(UserError, match="sigma_rel must be in"):
            sigma_rel_to_gamma(bad)


def test_the_inner_product_is_the_integral_of_the_two_weight_densities():
    def density(tau, t, gamma):
        return np.where(tau <= t, (gamma + 1) * tau ** gamma / t ** (gamma + 1), 0.0)

    n = 2_000_000
    cases = [(7.0, 3.5, 10.0, 6.9), (10.0, 16.97, 4.0, 0.5), (5.0, 2.0, 5.0, 2.0), (3.0, 0.0, 9.0, 16.97)]
    for t_a, gamma_a, t_b, gamma_b in cases:
        top = max(t_a, t_b)
        tau = (np.arange(n) + 0.5) * top / n  # midpoint rule on [0, max(t_a, t_b)]
        numeric = np.sum(density(tau, t_a, gamma_a) * density(tau, t_b, gamma_b)) * top / n
        assert power_profile_inner_product(t_a, gamma_a, t_b, gamma_b) == pytest.approx(numeric, rel=1e-5)
    # vectorised: broadcast over arrays, symmetric
    a = power_profile_inner_product(np.array([3.0, 8.0])[:, None], 2.0, np.array([5.0, 8.0, 9.0])[None, :], 7.0)
    assert a.shape == (2, 3) and a[1, 1] == pytest.approx(power_profile_inner_product(8.0, 7.0, 8.0, 2.0))


class Weights(nn.Module):
    def __init__(self, size: int, dtype=torch.float64):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(size, dtype=dtype))


def test_the_power_function_ema_is_the_explicit_weighted_average():
    gamma, steps = 6.94, 40
    thetas = torch.randn(steps, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = Weights(3)
    ema = PowerFunctionEMA(model, gamma)
    for step in range(steps):
        model.theta.data.copy_(thetas[step])
        ema.update(model, step)
        t = step + 1
        tau = torch.arange(1, t + 1, dtype=torch.float64)
        w = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / t ** (gamma + 1)  # theta_tau's weight at step t
        assert w.sum().item() == pytest.approx(1.0, rel=1e-12)
        torch.testing.assert_close(ema.weights["theta"], (w[:, None] * thetas[:t]).sum(0), rtol=1e-12, atol=1e-12)


def track(sigma_rels, steps=400, every=40, size=200):
    """A float32 random-walk 'training run' with drift, tracked by one profile per sigma_rel: the snapshots every
    `every` steps and the profiles at the end."""
    generator = torch.Generator().manual_seed(1)
    model = Weights(size, torch.float32)
    profiles = [PowerFunctionEMA(model, sigma_rel_to_gamma(s)) for s in sigma_rels]
    drift = torch.randn(size, generator=generator)
    snapshots = []
    for step in range(steps):
        model.theta.data += 0.01 * drift + 0.1 * torch.randn(size, generator=generator)
        for profile in profiles:
            profile.update(model, step)
        if (step + 1) % every == 0:
            snapshots.append({"step": step + 1, "gammas": [p.gamma for p in profiles[:2]],
                              "weights": [{k: v.clone() for k, v in p.weights.items()} for p in profiles[:2]]})
    return snapshots, [p.weights["theta"] for p in profiles]


def test_reconstructing_a_tracked_profile_gives_that_profile():
    snapshots, (narrow, wide) = track([0.05, 0.10])
    for sigma_rel, tracked in ((0.05, narrow), (0.10, wide)):
        weights, step, coefficients, fit_error = reconstruct(snapshots, sigma_rel)
        assert step == 400 and coefficients.shape == (20,) and fit_error < 1e-6
        # measured: 0.0 (coefficients e_i to 1e-15; the float64 sum rounds back to the float32 profile bit for bit)
        assert (weights["theta"] - tracked).abs().max().item() < 1e-6
    # exactly representable: the coefficients pick the stored profile itself
    x = reconstruction_coefficients([400, 400, 200], [16.97, 6.94, 16.97], 400, 6.94)
    np.testing.assert_allclose(x, [0, 1, 0], atol=1e-9)


def test_an_intermediate_length_is_reconstructed_closer_than_either_stored_profile():
    snapshots, (narrow, wide, direct) = track([0.05, 0.10, 0.07])
    weights, _, _, fit_error = reconstruct(snapshots, 0.07)
    assert fit_error < 0.05  # the weight profile itself: measured 0.9%
    error = (weights["theta"] - direct).norm().item()
    stored_errors = [(narrow - direct).norm().item(), (wide - direct).norm().item()]
    # measured: distance 0.028 against 1.98 (0.05) and 2.90 (0.10); max abs 0.005 on weights of size ~10
    assert error < 0.1 * min(stored_errors), (error, stored_errors)


def test_a_tiny_run_writes_snapshots_and_the_command_writes_a_checkpoint_that_samples(tmp_path):
    run = tmp_path / "run"
    last = train(tiny_train_cfg(run, "trainer.posthoc_ema.every=2", "trainer.max_steps=5",
                             "trainer.checkpoint_every=0"))  # no periodic checkpoints: each save fsyncs
    snapshots = sorted(p.name for p in (run / "posthoc_ema").iterdir())
    assert snapshots == ["snapshot_0000002.pt", "snapshot_0000004.pt", "snapshot_0000005.pt"]  # every 2, and the end
    snapshot = ckpt.load_checkpoint(run / "posthoc_ema" / "snapshot_0000005.pt")
    assert snapshot["step"] == 5 and snapshot["sigma_rels"] == [0.05, 0.10] and len(snapshot["weights"]) == 2
    assert ckpt.load_checkpoint(last)["posthoc_ema"]["sigma_rels"] == [0.05, 0.10]  # for resume

    result = run_in_process("diffusion.training.posthoc_ema", str(run), "sigma_rel=0.07", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = run / "checkpoints" / "posthoc_ema_0.07.ckpt"
    written, original = ckpt.load_checkpoint(out), ckpt.load_checkpoint(last)
    assert written["ema"].keys() == original["ema"].keys()
    assert written["posthoc_ema_reconstruction"] == {"sigma_rel": 0.07, "step": 5}
    assert written["posthoc_ema"]["sigma_rels"] == [0.05, 0.10]  # a copy of last.ckpt: it resumes too
    assert not all(torch.equal(written["ema"][k], original["ema"][k]) for k in original["ema"])
    loaded = load_model(out)
    images = generate_images(loaded.model, loaded.sampler(), ["a red bird"], [0], shape=loaded.shape, steps=2,
                             decode=loaded.space.decode)
    assert torch.isfinite(images).all()

    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [([str(run), "sigma_rel=0.07"], "exists; give overwrite=true"),
             ([str(run), "sigma_rel=0.5"], "sigma_rel must be in"),
             ([str(run), "sigma_rel=0"], "sigma_rel must be in"),
             ([str(run), "sigma_rel=wide"], "sigma_rel must be a number"),
             ([str(empty), "sigma_rel=0.07"], "no post-hoc EMA snapshots"),
             ([str(run)], "give the run folder and sigma_rel")]
    for args, fragment in cases:
        result = run_in_process("diffusion.training.posthoc_ema", *args, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and lines[-1].startswith("error: ") and fragment in lines[-1], (args, result.stderr)
    other = tmp_path / "other.ckpt"
    result = run_in_process("diffusion.training.posthoc_ema", str(run), "sigma_rel=0.12", f"out={other}", cwd=tmp_path)
    assert result.returncode == 0 and other.is_file(), result.stderr
    result = run_in_process("diffusion.training.posthoc_ema", str(run), "sigma_rel=0.07", "overwrite=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_the_profiles_survive_a_state_dict_round_trip_and_refuse_other_sigma_rels(tmp_path):
    from diffusion.training.posthoc_ema import PosthocSnapshots

    model = Weights(4)
    first = PosthocSnapshots(model, [0.05, 0.10], 2, tmp_path)
    for step in range(3):
        model.theta.data += 1.0
        first.update(model, step)
    second = PosthocSnapshots(Weights(4), [0.05, 0.10], 2, tmp_path)
    second.load_state_dict(first.state_dict())
    for a, b in zip(first.profiles, second.profiles):
        assert a.gamma == b.gamma and torch.equal(a.weights["theta"], b.weights["theta"])
    with pytest.raises(UserError, match="resume with the same values"):
        PosthocSnapshots(Weights(4), [0.05, 0.2], 2, tmp_path).load_state_dict(first.state_dict())


@pytest.mark.slow
def test_a_resumed_run_writes_the_same_snapshots_as_an_uninterrupted_one(tmp_path):
    on = ("trainer.posthoc_ema.every=2", "trainer.checkpoint_every=0")
    train(tiny_train_cfg(tmp_path / "straight", *on, "trainer.max_steps=4"))
    half = train(tiny_train_cfg(tmp_path / "half", *on, "trainer.max_steps=2"))
    train(tiny_train_cfg(tmp_path / "resumed", *on, "trainer.max_steps=4", f"resume={half}"))
    a, b = (ckpt.load_checkpoint(tmp_path / run / "posthoc_ema" / "snapshot_0000004.pt") for run in ("straight", "resumed"))
    for weights_a, weights_b in zip(a["weights"], b["weights"]):
        for name in weights_a:
            torch.testing.assert_close(weights_a[name], weights_b[name], rtol=0, atol=0)
