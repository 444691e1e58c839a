"""Each guidance method's closed form on hand-made tensors, CFG rescale and APG against diffusers, and the
interval's network calls; no Hydra, no checkpoint."""

import math

import pytest
import torch
from diffusers.guiders.adaptive_projected_guidance import AdaptiveProjectedGuidance, MomentumBuffer
from diffusers.guiders.guider_utils import rescale_noise_cfg

from diffusion.conditioning import Cond
from diffusion.errors import UserError
from diffusion.guidance import (adaptive_projected_guidance, cfg_rescale, classifier_free_guidance, guidance_interval,
                                guided_denoiser)
from diffusion.objectives import EDMObjective

COND, UNCOND = Cond(class_labels=torch.tensor([1, 1])), Cond(class_labels=torch.tensor([-1, -1]))


class Table:
    """A stand-in network: `cond_out` for a class label >= 0, `uncond_out` for -1, each times (1 + t / 1000) so that
    the steps differ; it records the batch size of every call."""

    def __init__(self, uncond_out, cond_out):
        self.uncond_out, self.cond_out, self.batches = uncond_out, cond_out, []

    def __call__(self, x_t, t, cond):
        self.batches.append(x_t.shape[0])
        n = x_t.shape[0] // len(self.cond_out)
        pick = (cond.class_labels >= 0).view(-1, *[1] * (x_t.ndim - 1))
        out = torch.where(pick, self.cond_out.repeat(n, 1, 1, 1), self.uncond_out.repeat(n, 1, 1, 1))
        t = torch.as_tensor(t, dtype=out.dtype).reshape(-1, *[1] * (x_t.ndim - 1))
        return out * (1 + t / 1000)


def random_pair(seed=0, shape=(2, 4, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def test_cfg_is_uncond_plus_scale_times_the_difference():
    u, c = random_pair()
    out = classifier_free_guidance(Table(u, c), COND, UNCOND, 4.0)(u, 0)
    torch.testing.assert_close(out, u + 4.0 * (c - u), rtol=0, atol=1e-12)


def test_rescale_closed_form_and_against_diffusers():
    # closed form: uncond 0 makes x_cfg = w c, whose std is w std(c): the rescaled output is c itself (eq. 15-16)
    c = torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=torch.float64).view(1, 4, 1, 1).repeat(2, 1, 1, 1)
    out = cfg_rescale(Table(torch.zeros_like(c), c), COND, UNCOND, 5.0, phi=0.7)(c, 0)
    torch.testing.assert_close(out, 0.7 * c + 0.3 * 5.0 * c, rtol=0, atol=1e-12)
    u, c = random_pair(1)
    for phi in (0.0, 0.7, 1.0):
        ours = cfg_rescale(Table(u, c), COND, UNCOND, 7.5, phi=phi)(u, 0)
        theirs = rescale_noise_cfg(u + 7.5 * (c - u), c, guidance_rescale=phi)
        assert (ours - theirs).abs().max() < 1e-12  # measured 0 in float64 (the same operations)


def test_apg_closed_form_on_two_dimensional_outputs():
    # D_cond = (1, 0), D_uncond = (0, -1): Delta = (1, 1), parallel (1, 0), orthogonal (0, 1); w = 3
    c = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 2, 1, 1).repeat(2, 1, 1, 1)
    u = torch.tensor([0.0, -1.0], dtype=torch.float64).view(1, 2, 1, 1).repeat(2, 1, 1, 1)
    x = torch.zeros_like(c)

    def guided(steps=1, **options):
        denoise = adaptive_projected_guidance(Table(u, c), COND, UNCOND, 3.0, **options)
        return [denoise(x, 0)[0].flatten().tolist() for _ in range(steps)][-1]

    assert guided(eta=0.0, r=None, beta=0.0) == pytest.approx([1, 2])
    assert guided(eta=0.5, r=None, beta=0.0) == pytest.approx([2, 2])
    assert guided(eta=0.0, r=1.0, beta=0.0) == pytest.approx([1, math.sqrt(2)])  # Delta scaled to norm 1
    assert guided(steps=2, eta=0.0, r=None, beta=-0.5) == pytest.approx([1, 1])  # Delta = (1, 1) - 0.5 (1, 1)


def test_apg_is_cfg_with_eta_one_no_threshold_no_momentum():
    u, c = random_pair(2)
    apg = adaptive_projected_guidance(Table(u, c), COND, UNCOND, 6.0, eta=1.0, r=float("inf"), beta=0.0)
    cfg = classifier_free_guidance(Table(u, c), COND, UNCOND, 6.0)
    for t in (900, 500, 100):
        assert (apg(u, t) - cfg(u, t)).abs().max() < 1e-12


def test_apg_against_the_diffusers_guider_over_steps():
    """diffusers' AdaptiveProjectedGuidance with use_original_formulation (D_cond + s * update) and s = w - 1."""
    u, c = random_pair(3)
    for eta, r, beta in ((0.0, 15.0, -0.5), (0.3, 2.0, -0.75), (1.0, 0.5, 0.0)):
        ours = adaptive_projected_guidance(Table(u, c), COND, UNCOND, 5.0, eta=eta, r=r, beta=beta)
        guider = AdaptiveProjectedGuidance(guidance_scale=4.0, adaptive_projected_guidance_momentum=beta,
                                           adaptive_projected_guidance_rescale=r, eta=eta, use_original_formulation=True)
        guider.momentum_buffer = MomentumBuffer(beta)  # what the guider makes at its first step
        for t in (900, 600, 300, 50):
            scale = 1 + t / 1000  # the stand-in network's outputs at t
            theirs = guider.forward(c * scale, u * scale).pred
            assert (ours(u, t) - theirs).abs().max() < 1e-12, (eta, r, beta, t)  # measured 0 (float64)


def test_apg_momentum_starts_afresh_for_each_generation():
    u, c = random_pair(4)
    first = [adaptive_projected_guidance(Table(u, c), COND, UNCOND, 4.0)(u, 500) for _ in range(2)]
    assert torch.equal(first[0], first[1])


def test_the_interval_guides_inside_with_two_halves_and_outside_with_one_conditional_pass():
    u, c = random_pair(5)
    edm = EDMObjective()
    net = Table(u, c)
    denoise = guidance_interval(net, COND, UNCOND, 3.0, objective=edm, sigma_low=0.28, sigma_high=5.42)
    cfg = classifier_free_guidance(Table(u, c), COND, UNCOND, 3.0)
    for sigma in (1.0, 5.42):  # inside (0.28, 5.42]: one call on the [uncond; cond] batch of 4
        net.batches.clear()
        t = edm.model_time(sigma)
        assert torch.equal(denoise(u, t), cfg(u, t)) and net.batches == [4]
    for sigma in (80.0, 0.28, 0.002):  # outside: one conditional call on the batch of 2
        net.batches.clear()
        t = edm.model_time(sigma)
        assert torch.equal(denoise(u, t), c * (1 + t / 1000)) and net.batches == [2]


def test_each_objective_maps_its_model_time_back_to_sigma():
    from diffusion.noise_schedules import NoiseSchedule
    from diffusion.objectives import DDPMObjective, FlowObjective

    ddpm = DDPMObjective(NoiseSchedule.from_name("linear"))
    for objective in (ddpm, EDMObjective()):
        for sigma in (0.05, 0.7, 3.0, 40.0):
            t, _ = objective.from_sigma(sigma)
            assert objective.sigma_of_model_time(objective.model_time(t)) == pytest.approx(sigma, rel=1e-9)
    flow = FlowObjective()
    assert flow.sigma_of_model_time(flow.model_time(0.75)) == pytest.approx(3.0)
    assert flow.sigma_of_model_time(flow.model_time(1.0)) == math.inf


def test_variance_channels_come_from_the_conditional_pass():
    u, c = random_pair(6, shape=(2, 6, 2, 2))
    for method in (adaptive_projected_guidance, cfg_rescale):
        out = method(Table(u, c), COND, UNCOND, 4.0, guided_channels=3)(u, 0)
        assert torch.equal(out[:, 3:], c[:, 3:]) and not torch.equal(out[:, :3], c[:, :3])


@pytest.mark.parametrize("spec, fragment", [
    ({"name": "interval", "sigma_low": 5.0, "sigma_high": 1.0}, "sigma_low < sigma_high"),
    ({"name": "interval", "sigma_low": -1.0, "sigma_high": 1.0}, "sigma_low must be a number >= 0"),
    ({"name": "interval", "sigma_low": 100.0, "sigma_high": 200.0}, "outside this model's noise levels"),
    ({"name": "apg", "eta": -0.1}, "eta must be a number >= 0"),
    ({"name": "apg", "r": 0}, "r must be a number > 0"),
    ({"name": "apg", "beta": 1.0}, "beta must be a number in (-1, 1)"),
    ({"name": "rescale", "phi": 1.5}, "phi must be a number in [0, 1]"),
    ({"name": "rescale", "eta": 0.0}, "has no option 'eta'"),
    ({"name": "pag"}, "unknown guidance method"),
    ({"name": "auto"}, "give guide_ckpt="),  # autoguidance without its guide model
])
def test_a_bad_option_is_one_clear_line(spec, fragment):
    u, c = random_pair()
    with pytest.raises(UserError) as error:
        guided_denoiser(spec, Table(u, c), COND, UNCOND, 3.0, objective=EDMObjective())
    assert fragment in str(error.value) and "\n" not in str(error.value)
