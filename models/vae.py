"""The first stage of latent diffusion: a KL-regularised autoencoder (Kingma & Welling 2014; Rombach et al. 2022, sec. 3.1).

The encoder maps an image [B, 3, H, W] in [-1, 1] to a diagonal Gaussian posterior q(z | x) over latents
[B, latent_channels, H / f, W / f], with f = 2 ** (len(channel_mult) - 1) (4 for kl_f4, 8 for kl_f8); the
decoder maps a latent back to an image. Which latent is used is always the caller's explicit choice:
`posterior.mode()` (the mean) or `posterior.sample(generator)`.

Every change of resolution also has a parameter-free shortcut (Chen et al. 2024, "Deep Compression
Autoencoder", DC-AE sec. 3.2): space-to-channel then averaging channel groups on the way down, duplicating
channels then channel-to-space on the way up, and the same between the last features and the latent mean.
At initialisation the autoencoder is then already a patch codec that passes detail through, and the
convolutions learn residuals; on this CPU it reaches a given PSNR in about half the steps (experiments/latent).

Shape walk for kl_f4 at 64x64 (base 16, mult 1-2-4):
    x (B,3,64,64) -> conv_in (B,16,64,64) -> level 0 -> down (B,32,32,32) -> level 1 -> down (B,64,16,16)
    -> level 2 -> middle (res, attention, res) -> conv_out (B,8,16,16) = mean and logvar of (B,4,16,16)
    decoder: z (B,4,16,16) -> conv_in (B,64,16,16) -> middle -> level 2 -> up (B,32,32,32) -> level 1
    -> up (B,16,64,64) -> level 0 -> conv_out (B,3,64,64)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Downsample, ResBlock, SelfAttention2d, Upsample, group_norm

# The posterior's log-variance is clamped to this range (as in Rombach et al.'s DiagonalGaussianDistribution):
# exp(-30) is far below any latent's scale, and exp(20) keeps exp() finite in float32 early in training.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))), per latent element: mean and logvar are [B, C, h, w]."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> "DiagonalGaussian":
        """Split the encoder's [B, 2C, h, w] output into mean and logvar."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * eps, eps ~ N(0, I) (the reparameterisation trick, Kingma & Welling eq. 10)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over the latent dimensions: [B].
        0.5 * sum(mean^2 + var - 1 - logvar) (Kingma & Welling appendix B)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(dim=1)


def space_to_channel(x: torch.Tensor, out_channels: int, factor: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, out, H / factor, W / factor]: pixel-unshuffle, then average groups of channels (DC-AE)."""
    x = F.pixel_unshuffle(x, factor) if factor > 1 else x
    batch, channels, height, width = x.shape
    return x.reshape(batch, out_channels, channels // out_channels, height, width).mean(dim=2)


def channel_to_space(x: torch.Tensor, out_channels: int, factor: int) -> torch.Tensor:
    """[B, C, h, w] -> [B, out, h * factor, w * factor]: repeat each channel, then pixel-shuffle (DC-AE)."""
    x = x.repeat_interleave(out_channels * factor * factor // x.shape[1], dim=1)
    return F.pixel_shuffle(x, factor) if factor > 1 else x


def check_shortcut(values: int, groups: int, where: str) -> None:
    """A shortcut averages (or repeats) whole groups of channels: `values` must be a multiple of `groups`."""
    if values % groups:
        raise ValueError(f"the {where} shortcut needs {values} to be a multiple of {groups}; "
                         f"choose other widths or shortcuts=false")


class DownsampleShortcut(nn.Module):
    """Strided convolution to `out_channels` at half the resolution, plus the space-to-channel shortcut."""

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool, padding: int = 1):
        super().__init__()
        if shortcut:
            check_shortcut(in_channels * 4, out_channels, f"downsampling {in_channels}->{out_channels}")
        self.down = Downsample(in_channels, out_channels, padding)
        self.shortcut, self.out_channels = shortcut, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        return h + space_to_channel(x, self.out_channels, 2) if self.shortcut else h


class UpsampleShortcut(nn.Module):
    """Nearest upsampling + convolution to `out_channels`, plus the channel-to-space shortcut."""

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool):
        super().__init__()
        if shortcut:
            check_shortcut(out_channels * 4, in_channels, f"upsampling {in_channels}->{out_channels}")
        self.up, self.shortcut, self.out_channels = Upsample(in_channels, out_channels), shortcut, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        return h + channel_to_space(x, self.out_channels, 2) if self.shortcut else h


def middle_block(width: int, attention: bool, dropout: float) -> nn.Sequential:
    """Residual block -> self-attention (at the lowest resolution only: cheap there, global context) -> residual block."""
    return nn.Sequential(ResBlock(width, width, dropout=dropout),
                         SelfAttention2d(width) if attention else nn.Identity(),
                         ResBlock(width, width, dropout=dropout))


class Encoder(nn.Module):
    def __init__(self, in_channels, base_channels, channel_mult, num_res_blocks, latent_channels, attention, dropout,
                 shortcuts, width_change="resample", downsample_padding=1):
        super().__init__()
        widths = [base_channels * m for m in channel_mult]
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        blocks, width = [], widths[0]  # `width`: the features' width so far
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks):  # the first one widens when width_change="first_block"
                blocks.append(ResBlock(width, level_width, dropout=dropout))
                width = level_width
            if level < len(widths) - 1:
                next_width = widths[level + 1] if width_change == "resample" else width
                blocks.append(DownsampleShortcut(width, next_width, shortcuts, downsample_padding))
                width = next_width
        self.down = nn.Sequential(*blocks)
        self.middle = middle_block(widths[-1], attention, dropout)
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)  # mean and logvar
        self.latent_channels, self.shortcut = latent_channels, shortcuts
        if shortcuts:
            check_shortcut(widths[-1], latent_channels, "encoder output")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.middle(self.down(self.conv_in(x)))
        moments = self.conv_out(F.silu(self.norm_out(h)))  # (B, 2 * latent_channels, h, w)
        if self.shortcut:  # onto the mean only
            mean, logvar = moments.chunk(2, dim=1)
            moments = torch.cat([mean + space_to_channel(h, self.latent_channels, 1), logvar], dim=1)
        return moments


class Decoder(nn.Module):
    def __init__(self, latent_channels, base_channels, channel_mult, num_res_blocks, out_channels, attention, dropout,
                 shortcuts, width_change="resample"):
        super().__init__()
        widths = [base_channels * m for m in channel_mult]
        self.conv_in = nn.Conv2d(latent_channels, widths[-1], 3, padding=1)
        self.middle = middle_block(widths[-1], attention, dropout)
        blocks, width = [], widths[-1]  # `width`: the features' width so far
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks + 1):  # one more block per level on the way up, as in the UNet
                blocks.append(ResBlock(width, widths[level], dropout=dropout))
                width = widths[level]
            if level > 0:
                next_width = widths[level - 1] if width_change == "resample" else width
                blocks.append(UpsampleShortcut(width, next_width, shortcuts))
                width = next_width
        self.up = nn.Sequential(*blocks)
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)
        self.shortcut = shortcuts
        if shortcuts:
            check_shortcut(widths[-1], latent_channels, "decoder input")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        if self.shortcut:
            h = h + channel_to_space(z, h.shape[1], 1)
        h = self.up(self.middle(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,  # image channels
        base_channels: int = 64,  # width of the full-resolution level
        channel_mult: tuple = (1, 2, 2),  # width of level i = base_channels * channel_mult[i]; f = 2 ** (levels - 1)
        num_res_blocks: int = 1,  # residual blocks per level in the encoder (one more in the decoder)
        latent_channels: int = 4,  # channels of z (Rombach et al.: 3 or 4 for f4, 4 for f8)
        attention: bool = True,  # self-attention in the middle, at the lowest resolution
        dropout: float = 0.0,
        shortcuts: bool = True,  # parameter-free space<->channel shortcuts at every resampling (DC-AE): faster training
        width_change: str = "resample",  # where widths change: "resample" (the down / up convolution) or "first_block"
                                         # (a level's first residual block, as in Rombach et al.'s LDM / SD autoencoder)
        downsample_padding: int = 1,  # 1: pad every side; 0: bottom / right only (TF "SAME", the LDM / SD autoencoder)
        quant_convs: bool = False,  # 1x1 convolutions on the moments and on z (LDM's quant_conv / post_quant_conv)
        scale_factor: float | None = None,  # a published latent scale (SD: 0.18215), carried for the loader; the
                                            # network never uses it. None: measured after training (task=vae)
    ):
        super().__init__()
        if width_change not in ("resample", "first_block"):
            raise ValueError(f"width_change must be 'resample' or 'first_block', got {width_change!r}")
        channel_mult = tuple(channel_mult)
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.downsampling = 2 ** (len(channel_mult) - 1)
        self.scale_factor = scale_factor
        self.encoder = Encoder(in_channels, base_channels, channel_mult, num_res_blocks, latent_channels,
                               attention, dropout, shortcuts, width_change, downsample_padding)
        self.decoder = Decoder(latent_channels, base_channels, channel_mult, num_res_blocks, in_channels,
                               attention, dropout, shortcuts, width_change)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if quant_convs else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if quant_convs else None

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images [B, 3, H, W] in [-1, 1] -> q(z | x) over [B, latent_channels, H / f, W / f]."""
        height, width = x.shape[-2:]
        if height % self.downsampling or width % self.downsampling:
            raise ValueError(f"image {height}x{width} is not divisible by the autoencoder's downsampling "
                             f"{self.downsampling}; use a resolution that is a multiple of {self.downsampling}")
        moments = self.encoder(x)  # (B, 2 * latent_channels, H / f, W / f)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, latent_channels, h, w] -> images [B, 3, h * f, w * f] (unclamped; about [-1, 1])."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruction and posterior: decode a posterior sample (training) or its mean (sample_posterior=False)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """The decoder's output convolution, where the critic's adaptive weight compares gradients (Esser et al. eq. 7)."""
        return self.decoder.conv_out.weight
