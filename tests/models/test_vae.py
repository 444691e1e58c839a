"""The KL autoencoder: shapes for f4 and f8, the posterior's KL against its closed form, explicit
mean/sample choice, and that a briefly trained one reconstructs better than blurring by the same factor."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from diffusion.spaces.autoencoder import build_autoencoder, psnr, weights_fingerprint
from diffusion.data.toybirds import ToyBirds
from models.vae import LOGVAR_MAX, LOGVAR_MIN, AutoencoderKL, DiagonalGaussian, channel_to_space, space_to_channel

CONF = Path(__file__).resolve().parents[2] / "conf" / "vae"


@pytest.mark.parametrize("name,factor", [("kl_f4", 4), ("kl_f8", 8)])
def test_configs_build_and_give_the_advertised_shapes(name, factor):
    vae_cfg = OmegaConf.load(CONF / f"{name}.yaml")
    autoencoder = build_autoencoder(vae_cfg, where=name)  # the non-constructor keys (ckpt, loss, ...) are left out
    assert isinstance(autoencoder, AutoencoderKL) and autoencoder.downsampling == factor
    x = torch.randn(2, 3, 32, 32)
    posterior = autoencoder.encode(x)
    channels = vae_cfg.latent_channels
    assert posterior.mean.shape == posterior.logvar.shape == (2, channels, 32 // factor, 32 // factor)
    assert autoencoder.decode(posterior.mode()).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("shortcuts", [True, False])
@pytest.mark.parametrize("channel_mult,factor", [((1, 2, 2), 4), ((1, 2, 2, 2), 8)])
def test_tiny_shapes_and_explicit_mean_or_sample(channel_mult, factor, shortcuts):
    torch.manual_seed(0)
    autoencoder = AutoencoderKL(base_channels=8, channel_mult=channel_mult, latent_channels=4, shortcuts=shortcuts).eval()
    x = torch.randn(3, 3, 16 * factor // 4, 16 * factor // 4)
    side = x.shape[-1] // factor
    reconstruction, posterior = autoencoder(x, sample_posterior=False)
    assert reconstruction.shape == x.shape and posterior.mean.shape == (3, 4, side, side)
    torch.testing.assert_close(reconstruction, autoencoder.decode(posterior.mean))  # the mean, exactly
    sampled_a, _ = autoencoder(x, generator=torch.Generator().manual_seed(1))
    sampled_b, _ = autoencoder(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sampled_a, sampled_b)  # a sample is a pure function of its generator
    assert not torch.allclose(sampled_a, reconstruction)
    with pytest.raises(ValueError, match="not divisible"):
        autoencoder.encode(torch.randn(1, 3, factor * 2 + 2, factor * 2))


def test_shortcuts_need_channel_counts_that_divide():
    with pytest.raises(ValueError, match="encoder output shortcut needs 16 to be a multiple of 3"):
        AutoencoderKL(base_channels=8, channel_mult=(1, 2), latent_channels=3)
    AutoencoderKL(base_channels=8, channel_mult=(1, 2), latent_channels=3, shortcuts=False)


def test_space_channel_shortcuts():
    """DC-AE's parameter-free shortcuts: lossless when the channels grow by the area factor, an average pool
    when they stay the same, and the up shortcut spreads each value over its patch."""
    x = torch.randn(2, 3, 8, 8)
    packed = space_to_channel(x, 12, 2)  # (2, 12, 4, 4): nothing averaged
    torch.testing.assert_close(channel_to_space(packed, 3, 2), x)
    torch.testing.assert_close(space_to_channel(x, 3, 2), F.avg_pool2d(x, 2))
    torch.testing.assert_close(channel_to_space(F.avg_pool2d(x, 2), 3, 2),
                               F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest"))


def test_kl_matches_the_closed_form_of_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 3, 5, 5, generator=generator)
    logvar = torch.randn(4, 3, 5, 5, generator=generator) * 2
    posterior = DiagonalGaussian(mean, logvar)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(dim=1)
    assert posterior.kl().shape == (4,)
    torch.testing.assert_close(posterior.kl(), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(DiagonalGaussian(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)).kl(), torch.zeros(1))


def test_posterior_sample_mode_and_clamped_logvar():
    mean, logvar = torch.randn(2, 4, 3, 3), torch.full((2, 4, 3, 3), 100.0)
    posterior = DiagonalGaussian(mean, logvar)
    assert posterior.logvar.max() == LOGVAR_MAX and DiagonalGaussian(mean, -logvar).logvar.min() == LOGVAR_MIN
    assert torch.equal(posterior.mode(), mean)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(posterior.sample(torch.Generator().manual_seed(3)), mean + posterior.std * eps)


def test_weights_fingerprint_names_the_weights_not_the_object():
    a, b = AutoencoderKL(base_channels=8, channel_mult=(1, 2)), AutoencoderKL(base_channels=8, channel_mult=(1, 2))
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a.state_dict()) == weights_fingerprint(b.state_dict())
    with torch.no_grad():
        b.decoder.conv_out.bias[0] += 1e-3
    assert weights_fingerprint(a.state_dict()) != weights_fingerprint(b.state_dict())


def test_a_briefly_trained_autoencoder_beats_blurring_by_the_same_factor():
    """150 steps on a fixed batch of 16x16 toy-birds: encode -> decode (posterior mean) has a lower MSE on those
    images than averaging 4x4 blocks and upsampling bilinearly (the 'free' f4 compression; ~2.5x lower here)."""
    torch.manual_seed(0)
    dataset = ToyBirds(resolution=16, num_images=8)
    x = torch.stack([dataset[i]["image"] for i in range(8)])
    autoencoder = AutoencoderKL(base_channels=8, channel_mult=(1, 2, 2), latent_channels=4)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        reconstruction, posterior = autoencoder(x, generator=generator)
        loss = F.l1_loss(reconstruction, x) + 1e-6 * posterior.kl().mean() / x[0].numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        reconstruction = autoencoder(x, sample_posterior=False)[0].clamp(-1, 1)
    blurred = F.interpolate(F.avg_pool2d(x, 4), scale_factor=4, mode="bilinear", align_corners=False)
    model_mse, blur_mse = F.mse_loss(reconstruction, x).item(), F.mse_loss(blurred, x).item()
    assert model_mse < blur_mse, (model_mse, blur_mse)
    assert psnr(reconstruction, x).mean() > psnr(blurred, x).mean()
