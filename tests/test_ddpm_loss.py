"""The DDPM objective's loss: weights against Hang et al. 2023's formula, and the parameterisations' equivalence
up to weights."""

import pytest
import torch

from diffusion.errors import UserError
from diffusion.noise_schedules import NoiseSchedule
from diffusion.objectives import DDPMObjective
from diffusion.objectives.weighting import loss_weight


def diffusion_loss(output, x0, eps, t, schedule, prediction_type, weighting="uniform", gamma=5.0):
    return DDPMObjective(schedule, prediction_type, weighting, gamma).loss(output, x0, eps, None, t)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "x0"])
def test_min_snr_weights_equal_the_formula(prediction_type):
    s = NoiseSchedule.from_name("cosine", zero_terminal_snr=True)
    gamma = 5.0
    for t in [0, 100, 300, 500, 700, 999]:
        snr = float(s.snr(t))
        # Hang et al. 2023: w = min(SNR, gamma) / SNR (eps), min(SNR, gamma) (x0), min(SNR, gamma) / (SNR + 1) (v)
        expected = {"epsilon": (min(snr, gamma) / snr) if snr > 0 else 1.0,
                    "x0": min(snr, gamma), "v": min(snr, gamma) / (snr + 1)}[prediction_type]
        got = loss_weight(torch.tensor([snr], dtype=torch.float64), prediction_type, "min_snr", gamma)
        assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-15), t
    assert loss_weight(torch.tensor([3.0]), prediction_type, "uniform").item() == 1.0


def test_objectives_are_one_loss_up_to_the_snr_factor():
    """With pred_x0 off by d, eps-loss = SNR |d|^2, v-loss = (SNR + 1) |d|^2, x0-loss = |d|^2."""
    s = NoiseSchedule.from_name("linear")
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, 4, 4, generator=gen, dtype=torch.float64), torch.randn(6, 3, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([3, 50, 200, 500, 800, 990])
    x_t = s.add_noise(x0, eps, t)
    wrong_x0 = x0 + 0.1 * torch.randn(6, 3, 4, 4, generator=gen, dtype=torch.float64)
    wrong_eps = (x_t - s.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1) * wrong_x0) / (1 - s.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    x0_loss = ((wrong_x0 - x0) ** 2).flatten(1).mean(1)
    snr = s.snr(t)
    for prediction_type, factor in [("epsilon", snr), ("v", snr + 1), ("x0", torch.ones_like(snr))]:
        output = DDPMObjective(s, prediction_type).from_x0_eps(wrong_x0, wrong_eps, t)
        loss = diffusion_loss(output, x0, eps, t, s, prediction_type).double()
        torch.testing.assert_close(loss, factor * x0_loss, rtol=1e-5, atol=1e-9)
        # min-SNR makes every objective weigh x0 errors by min(SNR, gamma)
        weighted = diffusion_loss(output, x0, eps, t, s, prediction_type, "min_snr", 5.0).double()
        torch.testing.assert_close(weighted, snr.clamp(max=5.0) * x0_loss, rtol=1e-5, atol=1e-9)
        # min_snr_plus_one weighs them by min(SNR + 1, gamma): 1 (not ~0) at high noise, gamma at low noise
        capped = diffusion_loss(output, x0, eps, t, s, prediction_type, "min_snr_plus_one", 5.0).double()
        torch.testing.assert_close(capped, (snr + 1).clamp(max=5.0) * x0_loss, rtol=1e-5, atol=1e-9)


def test_perfect_prediction_has_zero_loss_and_shape_is_per_example():
    s = NoiseSchedule.from_name("cosine")
    x0, eps, t = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.randint(0, 1000, (4,))
    loss = diffusion_loss(DDPMObjective(s, "v").target(x0, eps, t), x0, eps, t, s, "v")
    assert loss.shape == (4,) and loss.abs().max() < 1e-10


def test_min_snr_plus_one_is_the_v_loss_capped_at_gamma():
    """For v: weight 1 wherever SNR + 1 <= gamma (the plain v loss), gamma / (SNR + 1) above; min-SNR's
    weight at the same SNR is never larger, and vanishes at SNR -> 0 where this one stays 1."""
    snr = torch.tensor([0.0, 1e-4, 0.5, 3.0, 4.0, 10.0, 1e3], dtype=torch.float64)
    got = loss_weight(snr, "v", "min_snr_plus_one", 5.0)
    expected = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 5.0 / 11.0, 5.0 / 1001.0], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    assert (loss_weight(snr, "v", "min_snr", 5.0) <= got).all()
    assert loss_weight(snr, "v", "min_snr", 5.0)[0] == 0.0


def test_bad_weighting():
    with pytest.raises(UserError, match="unknown loss weighting 'p2'; choose one of: uniform, min_snr"):
        loss_weight(torch.ones(1), "epsilon", "p2")
