"""Metrics against the truth: how far a set of samples is from the mixture they should come from.

- `sliced_wasserstein`: SW_p(P, Q) = (E_u W_p(u^T P, u^T Q)^p)^(1/p) over random unit directions u (Rabin et al.
  2011; Bonneel et al. 2015); each 1-D W_p between empirical measures is a match of sorted projections. The
  directions come from a seeded generator, so two calls with the same seed compare on the same projections.
- `mean_log_density`: E_samples[log p(x0)] under the clean mixture; for exact samples it estimates -H(p), so a
  value far above the true samples' means collapse onto the modes and far below means blur off the ridges.
- `mode_coverage`: per component, the mean posterior responsibility of the samples (whose expectation under
  the true distribution is exactly pi_k), the fraction whose most likely component it is, and the fraction within
  k standard deviations of it (Mahalanobis distance), beside the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion.errors import UserError
from diffusion.testbed.mixture import GaussianMixture, log_density, posterior_weights


def random_directions(dim: int, num_projections: int, seed: int = 0) -> torch.Tensor:
    """num_projections unit vectors uniform on the sphere in R^dim: [dim, num_projections]."""
    u = torch.randn(dim, num_projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u / u.norm(dim=0, keepdim=True)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, num_projections: int = 256, seed: int = 0, p: int = 2) -> float:
    """Sliced W_p between the sample sets x [N, d] and y [M, d]. For N != M each projected sample is read at the
    common quantile levels (i + 1/2) / max(N, M)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) == 0 or len(y) == 0:
        raise UserError(f"sliced_wasserstein needs two non-empty [N, d] sample sets, got {tuple(x.shape)} and {tuple(y.shape)}")
    u = random_directions(x.shape[1], num_projections, seed)
    x_proj = (u.T @ x.to(torch.float64).T).sort(dim=1).values  # [P, N]
    y_proj = (u.T @ y.to(torch.float64).T).sort(dim=1).values  # [P, M]
    n = max(len(x), len(y))
    levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    x_q = x_proj[:, (levels * len(x)).long()]  # [P, n] the quantile function at the common levels
    y_q = y_proj[:, (levels * len(y)).long()]
    return float(((x_q - y_q).abs() ** p).mean() ** (1 / p))


def mean_log_density(mixture: GaussianMixture, x: torch.Tensor, class_labels=None) -> float:
    """Mean of log p(x) under the clean mixture (or p(x | c)); compare it with the same for true samples."""
    return float(log_density(mixture, x.to(torch.float64), 0.0, class_labels).mean())


@dataclass(frozen=True)
class ModeCoverage:
    weights: torch.Tensor  # [K] the true pi_k
    responsibility: torch.Tensor  # [K] mean over samples of P(k | x); E = pi_k for true samples
    nearest: torch.Tensor  # [K] fraction of samples whose most likely component is k
    within: torch.Tensor  # [K] fraction within k_std standard deviations of component k (Mahalanobis)
    expected_within: torch.Tensor  # [K] pi_k P(chi^2_d <= k_std^2): `within` for true samples of separated components

    @property
    def total_variation(self) -> float:
        """1/2 sum_k |responsibility_k - pi_k|: 0 when every mode has its share of the samples."""
        return float(0.5 * (self.responsibility - self.weights).abs().sum())

    def missed(self, fraction: float = 0.1) -> list[int]:
        """Components holding less than `fraction` of their true share of nearest samples."""
        return [k for k in range(len(self.weights)) if self.nearest[k] < fraction * self.weights[k]]


def mode_coverage(mixture: GaussianMixture, x: torch.Tensor, k_std: float = 3.0) -> ModeCoverage:
    """How the samples x [N, d] spread over the mixture's components."""
    x = x.to(torch.float64)
    w = posterior_weights(mixture, x, 0.0)  # [N, K]
    y = torch.einsum("kji,nkj->nki", mixture.eigenvectors, x[:, None, :] - mixture.means[None])  # Q_k^T (x - mu_k)
    mahalanobis = ((y**2) / mixture.eigenvalues[None]).sum(-1).sqrt()  # [N, K]
    nearest = torch.bincount(w.argmax(dim=1), minlength=mixture.num_components).to(torch.float64) / len(x)
    chi2_cdf = torch.special.gammainc(torch.tensor(mixture.dim / 2, dtype=torch.float64),
                                      torch.tensor(k_std**2 / 2, dtype=torch.float64))  # P(chi^2_d <= k^2)
    return ModeCoverage(weights=mixture.weights, responsibility=w.mean(0), nearest=nearest,
                        within=(mahalanobis <= k_std).to(torch.float64).mean(0),
                        expected_within=mixture.weights * chi2_cdf)
