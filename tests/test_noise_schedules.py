"""NoiseSchedule: parity with diffusers' beta schedules, and the forward process by Monte Carlo."""

import pytest
import torch

from diffusion.errors import UserError
from diffusion.noise_schedules import NoiseSchedule
from diffusion.objectives import DDPMObjective

diffusers = pytest.importorskip("diffusers")

DIFFUSERS_NAME = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
# diffusers reads beta_start / beta_end from its config; Stable Diffusion's are 0.00085 / 0.012
DIFFUSERS_BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "cosine": (1e-4, 0.02)}


def reference_scheduler(cls, name, zero_terminal_snr=False, **kwargs):
    beta_start, beta_end = DIFFUSERS_BETAS[name]
    return cls(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAME[name], beta_start=beta_start,
               beta_end=beta_end, rescale_betas_zero_snr=zero_terminal_snr, **kwargs)


@pytest.mark.parametrize("name", list(DIFFUSERS_NAME))
@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_alphas_cumprod_match_diffusers(name, zero_terminal_snr):
    ours = NoiseSchedule.from_name(name, 1000, zero_terminal_snr=zero_terminal_snr)
    ref = reference_scheduler(diffusers.DDPMScheduler, name, zero_terminal_snr)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)
    if zero_terminal_snr:
        assert ours.alphas_cumprod[-1] == 0 and ours.snr(999) == 0
        # Lin et al. keep alpha_bar_0 unchanged
        plain = NoiseSchedule.from_name(name, 1000)
        torch.testing.assert_close(ours.alphas_cumprod[0], plain.alphas_cumprod[0])


def test_every_schedule_is_a_valid_forward_process():
    for name in ["linear", "scaled_linear", "cosine", "sigmoid"]:
        s = NoiseSchedule.from_name(name, 1000)
        assert s.betas.dtype == torch.float64 and s.betas.shape == (1000,)
        assert (s.betas > 0).all() and (s.betas < 1).all()
        assert (s.alphas_cumprod.diff() < 0).all(), "alpha-bar must decrease"
        assert s.alphas_cumprod[0] > 0.99 and s.alphas_cumprod[-1] < 0.01
        assert (s.log_snr(torch.arange(1000)).diff() < 0).all()


def test_snr_and_log_snr_agree():
    s = NoiseSchedule.from_name("cosine")
    t = torch.tensor([0, 10, 500, 998])
    a = s.alphas_cumprod[t]
    torch.testing.assert_close(s.snr(t), a / (1 - a))
    torch.testing.assert_close(s.log_snr(t), torch.log(a / (1 - a)))
    assert s.alpha_bar(-1) == 1.0


def test_forward_process_mean_and_variance_by_monte_carlo():
    s = NoiseSchedule.from_name("linear")
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n,), 0.7, dtype=torch.float64)
    for t in [0, 100, 500, 999]:
        x_t = s.add_noise(x0, torch.randn(n, generator=gen, dtype=torch.float64), torch.full((n,), t))
        a = float(s.alphas_cumprod[t])
        mean_se, var_se = (1 - a) ** 0.5 / n**0.5, (1 - a) * (2 / n) ** 0.5
        assert abs(x_t.mean() - a**0.5 * 0.7) < 5 * mean_se
        assert abs(x_t.var() - (1 - a)) < 5 * var_se


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "x0"])
def test_parameterisations_round_trip(prediction_type):
    s = NoiseSchedule.from_name("cosine")
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 3, 4, 4, generator=gen, dtype=torch.float64), torch.randn(8, 3, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 5, 50, 200, 400, 600, 800, 990])
    x_t = s.add_noise(x0, eps, t)
    objective = DDPMObjective(s, prediction_type)  # the one place the conversions are written
    output = objective.target(x0, eps, t)
    pred_x0, pred_eps = objective.to_x0_eps(output, x_t, t)
    torch.testing.assert_close(pred_x0, x0, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(pred_eps, eps, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(objective.from_x0_eps(pred_x0, pred_eps, t), output)
    # a fractional timestep (the sigma samplers' t(sigma)) takes the float path: same values at an integer t
    torch.testing.assert_close(objective.to_x0_eps(output[:1], x_t[:1], float(t[0]))[0], pred_x0[:1], atol=1e-7, rtol=1e-7)


def test_bad_names_are_one_clear_error():
    with pytest.raises(UserError, match="unknown noise schedule 'cosin'.*linear.*cosine"):
        NoiseSchedule.from_name("cosin")
    with pytest.raises(UserError, match="unknown prediction type 'eps'.*epsilon, v, x0"):
        DDPMObjective(NoiseSchedule.from_name("linear"), "eps")
