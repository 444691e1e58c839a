"""A Gaussian mixture and its exact closed forms under Gaussian noise, in the sigma view x = x0 + sigma eps.

    p(x0)        = sum_k pi_k N(x0; mu_k, C_k)
    p(x; sigma)  = sum_k pi_k N(x; mu_k, C_k + sigma^2 I)            (the data convolved with N(0, sigma^2 I))
    w_k(x)       = pi_k N(x; mu_k, C_k + sigma^2 I) / p(x; sigma)     (the posterior over components)
    score        = grad_x log p(x; sigma) = -sum_k w_k (C_k + sigma^2 I)^-1 (x - mu_k)
    D(x; sigma)  = E[x0 | x] = x + sigma^2 score                      (Tweedie; Efron 2011 eq. 2.8, Karras 2022 eq. 3)

Each C_k is stored by its eigendecomposition C_k = Q_k diag(lambda_k) Q_k^T, so C_k + sigma^2 I has the same
eigenvectors and eigenvalues lambda_k + sigma^2: every closed form costs O(B K d^2) with one decomposition at
construction. A class is a subset of components (`classes[k]` is component k's label); p(x0 | c) keeps the
components of class c, weights renormalised. A class label outside [0, num_classes) (the framework's -1 or
num_classes "null" label) means the unconditional mixture, so one batch may mix conditional and unconditional rows.

Everything is float64, batch-first: x is [B, d], sigma a float or [B], class_labels None or [B] (int).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from diffusion.errors import UserError


@dataclass(frozen=True)
class GaussianMixture:
    weights: torch.Tensor  # [K] pi_k, positive; normalised to sum 1 on construction
    means: torch.Tensor  # [K, d] mu_k
    covariances: torch.Tensor  # [K, d, d] C_k, symmetric positive definite
    classes: torch.Tensor | None = None  # [K] int class of each component; None = one class (0)
    eigenvalues: torch.Tensor = field(init=False, repr=False)  # [K, d] lambda_k
    eigenvectors: torch.Tensor = field(init=False, repr=False)  # [K, d, d] Q_k (columns)

    def __post_init__(self):
        weights, means, covariances = (torch.as_tensor(v, dtype=torch.float64) for v in
                                       (self.weights, self.means, self.covariances))
        K = weights.shape[0] if weights.ndim == 1 else -1
        if K < 1 or means.ndim != 2 or means.shape[0] != K or covariances.shape != (K, means.shape[1], means.shape[1]):
            raise UserError(f"a Gaussian mixture needs weights [K], means [K, d], covariances [K, d, d]; got "
                            f"{tuple(weights.shape)}, {tuple(means.shape)}, {tuple(covariances.shape)}")
        if not bool((weights > 0).all()):
            raise UserError(f"mixture weights must be positive, got {weights.tolist()}")
        if not torch.allclose(covariances, covariances.transpose(1, 2), rtol=1e-10, atol=1e-12):
            raise UserError("mixture covariances must be symmetric")
        eigenvalues, eigenvectors = torch.linalg.eigh(covariances)
        if not bool((eigenvalues > 0).all()):
            raise UserError(f"mixture covariances must be positive definite; smallest eigenvalue {eigenvalues.min():.3g}")
        classes = torch.zeros(K, dtype=torch.long) if self.classes is None else torch.as_tensor(self.classes).long()
        if classes.shape != (K,) or bool((classes < 0).any()) or len(classes.unique()) != int(classes.max()) + 1:
            raise UserError(f"mixture classes must be [K] labels 0 .. C-1 with every class used, got {classes.tolist()}")
        for name, value in (("weights", weights / weights.sum()), ("means", means), ("covariances", covariances),
                            ("classes", classes), ("eigenvalues", eigenvalues), ("eigenvectors", eigenvectors)):
            object.__setattr__(self, name, value)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def num_classes(self) -> int:
        return int(self.classes.max()) + 1

    def class_mixture(self, label: int) -> "GaussianMixture":
        """p(x0 | c) as a mixture of its own (one class, weights renormalised)."""
        keep = self.classes == label
        return GaussianMixture(self.weights[keep], self.means[keep], self.covariances[keep])


# -------- shared pieces


def _sigma(sigma, batch: int) -> torch.Tensor:
    """A float or [B] noise level as a [B] float64 tensor."""
    return torch.as_tensor(sigma, dtype=torch.float64).expand(batch) if torch.as_tensor(sigma).ndim == 0 \
        else torch.as_tensor(sigma, dtype=torch.float64)


def log_prior(mixture: GaussianMixture, class_labels: torch.Tensor | None, batch: int) -> torch.Tensor:
    """log pi_k (or log pi_k / P(c) for k in class c, -inf elsewhere) per row: [B, K]."""
    log_pi = mixture.weights.log().expand(batch, -1)
    if class_labels is None:
        return log_pi
    labels = torch.as_tensor(class_labels).long().reshape(-1, 1).expand(batch, 1)
    conditional = (labels >= 0) & (labels < mixture.num_classes)  # [B, 1]; otherwise the null label
    in_class = mixture.classes[None, :] == labels  # [B, K]
    log_pi_c = torch.where(in_class, log_pi, torch.tensor(-math.inf, dtype=torch.float64))
    log_pi_c = log_pi_c - torch.logsumexp(log_pi_c, dim=1, keepdim=True)
    return torch.where(conditional, log_pi_c, log_pi)


def _component_terms(mixture: GaussianMixture, x: torch.Tensor, sigma, class_labels=None):
    """(log pi_k N(x; mu_k, C_k + sigma^2 I) [B, K], y = Q_k^T (x - mu_k) [B, K, d], lambda_k + sigma^2 [B, K, d])."""
    B, d = x.shape
    sigma = _sigma(sigma, B).to(x.device)
    variances = mixture.eigenvalues[None] + sigma[:, None, None] ** 2  # [B, K, d]
    y = torch.einsum("kji,bkj->bki", mixture.eigenvectors, x[:, None, :] - mixture.means[None])  # [B, K, d]
    log_normal = -0.5 * (d * math.log(2 * math.pi) + variances.log().sum(-1) + (y**2 / variances).sum(-1))
    return log_prior(mixture, class_labels, B) + log_normal, y, variances


# -------- the closed forms


def log_density(mixture: GaussianMixture, x: torch.Tensor, sigma=0.0, class_labels=None) -> torch.Tensor:
    """log p(x; sigma) (or log p(x; sigma | c)): [B]."""
    log_joint, _, _ = _component_terms(mixture, x, sigma, class_labels)
    return torch.logsumexp(log_joint, dim=1)


def posterior_weights(mixture: GaussianMixture, x: torch.Tensor, sigma=0.0, class_labels=None) -> torch.Tensor:
    """w_k(x) = P(component k | x; sigma): [B, K], rows summing to 1."""
    log_joint, _, _ = _component_terms(mixture, x, sigma, class_labels)
    return torch.softmax(log_joint, dim=1)


def score(mixture: GaussianMixture, x: torch.Tensor, sigma=0.0, class_labels=None) -> torch.Tensor:
    """grad_x log p(x; sigma) = -sum_k w_k (C_k + sigma^2 I)^-1 (x - mu_k): [B, d]."""
    log_joint, y, variances = _component_terms(mixture, x, sigma, class_labels)
    w = torch.softmax(log_joint, dim=1)  # [B, K]
    # (C_k + sigma^2 I)^-1 (x - mu_k) = Q_k diag(1 / (lambda_k + sigma^2)) y, in the original axes
    precision_times_residual = torch.einsum("kij,bkj->bki", mixture.eigenvectors, y / variances)  # [B, K, d]
    return -(w[..., None] * precision_times_residual).sum(1)


def denoiser(mixture: GaussianMixture, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
    """The exact D(x; sigma) = E[x0 | x0 + sigma eps = x] = x + sigma^2 score (Tweedie): [B, d].

    sigma = inf gives the limit E[x0] (of the class, where a label is given)."""
    B = x.shape[0]
    sigma = _sigma(sigma, B).to(x.device)
    infinite = torch.isinf(sigma)
    finite_sigma = torch.where(infinite, torch.ones_like(sigma), sigma)
    finite_x = torch.where(infinite[:, None], torch.zeros_like(x), x)
    D = finite_x + finite_sigma[:, None] ** 2 * score(mixture, finite_x, finite_sigma, class_labels)
    if bool(infinite.any()):
        prior_mean = torch.softmax(log_prior(mixture, class_labels, B), dim=1) @ mixture.means  # [B, d]
        D = torch.where(infinite[:, None], prior_mean, D)
    return D


def guided_denoiser(mixture: GaussianMixture, x: torch.Tensor, sigma, class_labels, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance with exact halves (Ho & Salimans 2021): D_u + w (D_c - D_u); w = 1 is D_c."""
    D_cond = denoiser(mixture, x, sigma, class_labels)
    if guidance_scale == 1.0:
        return D_cond
    return torch.lerp(denoiser(mixture, x, sigma, None), D_cond, guidance_scale)


def autoguided_denoiser(mixture: GaussianMixture, guide: GaussianMixture, x: torch.Tensor, sigma, class_labels,
                        guidance_scale: float) -> torch.Tensor:
    """Autoguidance with exact halves (Karras et al. 2024, eq. 2): D_0 + w (D_1 - D_0), D_1 of `mixture` and D_0 of
    `guide`, both conditional; w = 1 is D_1."""
    D_main = denoiser(mixture, x, sigma, class_labels)
    if guidance_scale == 1.0:
        return D_main
    return torch.lerp(denoiser(guide, x, sigma, class_labels), D_main, guidance_scale)


def sample(mixture: GaussianMixture, n: int, generator: torch.Generator, class_labels=None, sigma=0.0) -> torch.Tensor:
    """n draws of x = x0 + sigma eps with x0 ~ p(x0) (or p(x0 | c)): [n, d]."""
    labels = None if class_labels is None else torch.as_tensor(class_labels).long().reshape(-1).expand(n)
    k = torch.multinomial(log_prior(mixture, labels, n).exp(), 1, replacement=True, generator=generator)[:, 0]  # [n]
    z = torch.randn(n, mixture.dim, generator=generator, dtype=torch.float64)
    x0 = mixture.means[k] + torch.einsum("nij,nj->ni", mixture.eigenvectors[k], mixture.eigenvalues[k].sqrt() * z)
    eps = torch.randn(n, mixture.dim, generator=generator, dtype=torch.float64)
    return x0 + _sigma(sigma, n)[:, None] * eps
