"""A patch critic (PatchGAN discriminator; Isola et al. 2017, sec. 3.2.2). The adversarial terms of the
autoencoder's loss it serves live with the autoencoder's training (diffusion/training/adversarial.py).

The critic scores every overlapping patch of an image as real or reconstructed, so it pushes the decoder
toward locally sharp texture rather than the blur an L1/L2 loss settles for. Its normalisation is GroupNorm,
not BatchNorm: the critic sees one batch of real images and one of reconstructions, and BatchNorm's batch
statistics would differ between the two and let it tell them apart by those statistics instead of by the
images (and would make its score of one image depend on the others in the batch); GroupNorm normalises
each example on its own, and works with the small batches of CPU training.
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import group_norm


class PatchCritic(nn.Module):
    """Conv 4x4/2 -> LeakyReLU, then (num_layers - 1) x [conv 4x4/2 -> GroupNorm -> LeakyReLU],
    conv 4x4/1 -> GroupNorm -> LeakyReLU, conv 4x4/1 -> one logit per patch: [B, 1, ~H / 2^L, ~W / 2^L].
    With num_layers=3 each logit sees a 70x70 patch (Isola et al.'s 70x70 PatchGAN)."""

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,  # width of the first layer; doubled per layer up to 8x
        num_layers: int = 3,  # strided layers; more layers = larger patches
    ):
        super().__init__()
        layers = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = base_channels
        for n in range(1, num_layers + 1):
            stride = 2 if n < num_layers else 1
            out = base_channels * min(2**n, 8)
            layers += [nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False), group_norm(out), nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        for module in self.modules():  # DCGAN init (Radford et al. 2016), as in pix2pix
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
