"""exact_network: through each objective's own network_input / model_time / denoise, the exact D comes back."""

import math
from types import SimpleNamespace

import pytest
import torch

from diffusion.errors import UserError
from diffusion.objectives import DDPMObjective, EDMObjective, FlowObjective
from diffusion.noise_schedules import NoiseSchedule
from diffusion.testbed import class_labels_of, denoiser, exact_network, random_mixture, sample, toy_mixture_2d

TOY = toy_mixture_2d()
HIGH = random_mixture(dim=5, num_components=4, num_classes=2, seed=2)
B = 16


def sigma_view(objective, t):
    """(alpha, sigma) of x_t = alpha (x0 + sigma eps), from the objectives' public definitions, per row [B]."""
    t = torch.as_tensor(t, dtype=torch.float64).expand(B)
    if isinstance(objective, DDPMObjective):
        a = torch.tensor([objective.alpha_bar(float(v)) for v in t], dtype=torch.float64)
        return a.sqrt(), ((1 - a) / a).sqrt()
    if isinstance(objective, EDMObjective):
        return torch.ones(B, dtype=torch.float64), t
    return 1 - t, t / (1 - t)  # flow


def check(objective, mixture, t, labels=None):
    """objective.denoise(network(network_input(x_t, t), model_time(t)), x_t, t) == D(x_t / alpha; sigma) to 1e-10."""
    alpha, sigma = sigma_view(objective, t)
    x0 = sample(mixture, B, torch.Generator().manual_seed(0))
    x_t = alpha[:, None] * (x0 + sigma[:, None] * torch.randn(B, mixture.dim, generator=torch.Generator().manual_seed(1),
                                                               dtype=torch.float64))
    network = exact_network(mixture, objective)
    output = network(objective.network_input(x_t, t), objective.model_time(t), labels)
    expected = denoiser(mixture, x_t / alpha[:, None], sigma, class_labels_of(labels))
    torch.testing.assert_close(objective.denoise(output, x_t, t), expected, rtol=1e-10, atol=1e-10)


LINEAR = NoiseSchedule.from_name("linear", 1000)
COSINE = NoiseSchedule.from_name("cosine", 1000)
DDPM_TIMES = [0, 10, 500, 999, 333.3, 0.5, 998.7]  # integers (the table) and fractions (the sigma solvers' times)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
@pytest.mark.parametrize("mixture", [TOY, HIGH], ids=["toy2d", "random5d"])
def test_ddpm_every_prediction_type(prediction_type, schedule, mixture):
    objective = DDPMObjective(schedule, prediction_type)
    for t in DDPM_TIMES:
        check(objective, mixture, t)
    check(objective, mixture, torch.arange(B) * 60)  # a [B] batch of integer timesteps, as the discrete samplers give


@pytest.mark.parametrize("mixture", [TOY, HIGH], ids=["toy2d", "random5d"])
def test_edm(mixture):
    objective = EDMObjective()
    for sigma in (0.002, 0.05, 0.5, 3.0, 80.0):
        check(objective, mixture, sigma)
    check(objective, mixture, torch.logspace(-2.5, 1.9, B, dtype=torch.float64))  # per-row sigma


@pytest.mark.parametrize("mixture", [TOY, HIGH], ids=["toy2d", "random5d"])
def test_flow(mixture):
    objective = FlowObjective(shift=3.0)
    for t in (1e-4, 0.1, 0.5, 0.9, 0.999):
        check(objective, mixture, t)
    check(objective, mixture, torch.linspace(0.01, 0.99, B, dtype=torch.float64))


def test_class_labels_from_a_cond_record_a_dict_or_a_tensor():
    labels = torch.tensor([0, 1, -1, 2] * (B // 4))  # 2 is the null label of a 2-class mixture
    for cond in (SimpleNamespace(class_labels=labels), {"class_labels": labels}, labels):
        for objective in (DDPMObjective(LINEAR, "v"), EDMObjective(), FlowObjective()):
            check(objective, TOY, {"ddpm": 400, "edm": 0.7, "flow": 0.4}[objective.name], cond)
    check(EDMObjective(), TOY, 0.7, SimpleNamespace(class_labels=labels))  # conditional rows differ from unconditional
    network = exact_network(TOY, EDMObjective())
    x = torch.randn(B, 2, dtype=torch.float64)
    assert not torch.allclose(network(x, 0.0, labels), network(x, 0.0))
    torch.testing.assert_close(network(x, 0.0, labels)[2::4], network(x, 0.0)[2::4])


def test_the_pure_noise_end_denoises_to_the_mean():
    """Flow t = 1 and a zero-terminal-SNR DDPM's last step (a = 0, v-prediction) have alpha = 0: pred_x0 = E[x0]."""
    x_t = torch.randn(B, 2, dtype=torch.float64)
    mean = (TOY.weights @ TOY.means).expand(B, 2)
    flow = FlowObjective()
    out = exact_network(TOY, flow)(x_t, flow.model_time(1.0))
    torch.testing.assert_close(flow.denoise(out, x_t, 1.0), mean)
    ddpm = DDPMObjective(NoiseSchedule.from_name("cosine", 1000, zero_terminal_snr=True), "v")
    out = exact_network(TOY, ddpm)(x_t, 999)
    torch.testing.assert_close(ddpm.denoise(out, x_t, 999), mean)


def test_float32_in_float32_out_and_bad_calls_refused():
    network = exact_network(TOY, EDMObjective())
    assert network(torch.randn(3, 2), 1.0).dtype == torch.float32
    with pytest.raises(UserError):
        network(torch.randn(3, 3), 1.0)
    with pytest.raises(UserError):
        exact_network(TOY, object())
    assert math.isfinite(float(network(torch.zeros(1, 2), 1000 * math.log(80) / 4).abs().max()))
