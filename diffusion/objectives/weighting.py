"""The DDPM objective's loss weights: regress the network onto epsilon, v or x0 with a per-timestep weight.

All three objectives are the same denoising loss up to a weight on ||x0 - pred_x0||^2 (Kingma et al.
2021; Salimans & Ho 2022): with SNR = alpha_bar / (1 - alpha_bar),
    ||eps - pred_eps||^2 = SNR        * ||x0 - pred_x0||^2
    ||v   - pred_v||^2   = (SNR + 1)  * ||x0 - pred_x0||^2
    ||x0  - pred_x0||^2  = 1          * ||x0 - pred_x0||^2
Min-SNR-gamma (Hang et al. 2023) makes the effective x0 weight min(SNR, gamma), so the weight that
multiplies each objective is min(SNR, gamma) divided by that objective's own factor above.
`min_snr_plus_one` caps the v objective's weight instead: effective x0 weight min(SNR + 1, gamma). It
equals min-SNR above SNR = gamma - 1 but keeps weight 1 (not SNR -> 0) at high noise, where the
global layout of the image (and how much the prompt decides it) is learnt.
"""

from __future__ import annotations

import torch

from diffusion.errors import UserError, check_choice

PREDICTION_TYPES = ("epsilon", "v", "x0")

WEIGHTINGS = ("uniform", "min_snr", "min_snr_plus_one")


def min_snr_weight(snr: torch.Tensor, prediction_type: str, gamma: float = 5.0) -> torch.Tensor:
    """Hang et al. 2023, eq. 9 and its v / x0 forms: min(SNR, gamma) / (the objective's x0 factor)."""
    check_choice("prediction type", prediction_type, PREDICTION_TYPES)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "x0":
        return clipped
    if prediction_type == "v":
        return clipped / (snr + 1)
    # epsilon: min(SNR, gamma) / SNR written as min(1, gamma / SNR) so that SNR = 0 gives 1, not 0/0
    return (gamma / snr).clamp(max=1.0)


def min_snr_plus_one_weight(snr: torch.Tensor, prediction_type: str, gamma: float = 5.0) -> torch.Tensor:
    """min(SNR + 1, gamma) / (the objective's x0 factor): the v loss with its weight capped at gamma."""
    check_choice("prediction type", prediction_type, PREDICTION_TYPES)
    capped = (snr + 1).clamp(max=gamma)
    if prediction_type == "x0":
        return capped
    if prediction_type == "v":
        return capped / (snr + 1)
    return capped / snr  # epsilon: infinite at SNR 0, where eps carries no information (refused by the schedule check)


def loss_weight(snr: torch.Tensor, prediction_type: str, weighting: str = "uniform", gamma: float = 5.0) -> torch.Tensor:
    """The weight of each example's mean squared error, from its SNR [B]."""
    check_choice("loss weighting", weighting, WEIGHTINGS)
    if weighting == "uniform":
        return torch.ones_like(snr)
    if gamma <= 0:
        raise UserError(f"min_snr gamma must be > 0, got {gamma}")
    if weighting == "min_snr_plus_one":
        return min_snr_plus_one_weight(snr, prediction_type, gamma)
    return min_snr_weight(snr, prediction_type, gamma)
