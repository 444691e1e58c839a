"""The patch critic and the adversarial terms: shapes, per-example scores, hinge loss, and the adaptive
weight of Esser et al. eq. 7 checked against gradients taken by hand."""

import pytest
import torch
import torch.nn.functional as F

from diffusion.training.adversarial import adaptive_weight, critic_active, generator_loss, hinge_d_loss
from models.critic import PatchCritic
from models.vae import AutoencoderKL


@pytest.mark.parametrize("num_layers,side", [(2, 6), (3, 2)])
def test_one_logit_per_patch(num_layers, side):
    critic = PatchCritic(base_channels=8, num_layers=num_layers)
    assert critic(torch.randn(3, 3, 32, 32)).shape == (3, 1, side, side)


def test_scores_are_per_example_no_batch_statistics():
    """GroupNorm, not BatchNorm: an image's score does not depend on the rest of its batch (even in train mode)."""
    torch.manual_seed(0)
    critic = PatchCritic(base_channels=8, num_layers=2).train()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(critic(x)[:1], critic(x[:1]), rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in critic.modules())


def test_hinge_and_generator_losses():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = 0, 1, 2
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (2.5 / 3 + 3.0 / 3)))
    torch.testing.assert_close(generator_loss(fake), torch.tensor(1.0 / 3))


def test_adaptive_weight_follows_the_formula():
    torch.manual_seed(0)
    autoencoder = AutoencoderKL(base_channels=8, channel_mult=(1, 2), latent_channels=2)
    critic = PatchCritic(base_channels=8, num_layers=2)
    x = torch.randn(2, 3, 16, 16)
    reconstruction, _ = autoencoder(x, sample_posterior=False)
    rec_loss = F.l1_loss(reconstruction, x)
    g_loss = generator_loss(critic(reconstruction))
    last = autoencoder.last_layer_weight

    weight = adaptive_weight(rec_loss, g_loss, last)
    rec_grad, = torch.autograd.grad(rec_loss, last, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last, retain_graph=True)
    expected = rec_grad.norm() / (g_grad.norm() + 1e-4)
    torch.testing.assert_close(weight, expected)
    assert not weight.requires_grad and weight > 0

    # clamped to max_weight, and the graph is still there for the real backward pass afterwards
    assert adaptive_weight(rec_loss, g_loss, last, max_weight=1e-3) == pytest.approx(1e-3)
    (rec_loss + weight * g_loss).backward()
    assert last.grad is not None


def test_the_critic_is_off_before_its_start_step():
    assert not critic_active(999, 1000) and critic_active(1000, 1000) and critic_active(5, 0)
