"""The adversarial terms of the autoencoder's loss (Esser et al. 2021, "Taming Transformers", sec. 3.1;
Rombach et al. 2022, appendix G), played against the patch critic of models/critic.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The critic's hinge loss (Lim & Ye 2017): 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_rec))])."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The autoencoder's adversarial term: -E[D(x_rec)] (Esser et al. 2021, eq. 5's generator side)."""
    return -fake_logits.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer_weight: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """lambda = ||grad_L rec_loss|| / (||grad_L g_loss|| + 1e-4) at the decoder's last layer L (Esser et al. 2021,
    eq. 7), clamped to [0, max_weight] and detached: the adversarial gradient is rescaled to the size of the
    reconstruction gradient, so neither term drowns the other whatever their raw scales."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer_weight, retain_graph=True)[0]
    weight = torch.linalg.vector_norm(rec_grad) / (torch.linalg.vector_norm(g_grad) + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def critic_active(step: int, start_step: int) -> bool:
    """The critic (its loss and its term in the autoencoder's loss) is off before `start_step`: the
    reconstructions must first be good enough for the comparison to be informative (Esser et al.)."""
    return step >= start_step
