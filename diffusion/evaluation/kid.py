"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased estimate of the squared maximum mean
discrepancy between two feature sets, with the cubic polynomial kernel

    k(x, y) = (x . y / d + 1)^3

    MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(m(m-1)) sum_{i != j} k(y_i, y_j) - 2/m^2 sum_{i, j} k(x_i, y_j)

computed on `num_subsets` random subsets of `subset_size` from each set (as the paper and clean-fid /
torch-fidelity do), reported as mean and standard deviation over the subsets (when both sets are no
larger than subset_size, every subset is the whole set and the standard deviation is 0). Unlike FID, the
estimate is unbiased: for two samples of one distribution its expectation is 0 (single values can be
negative), and it does not grow as the sample shrinks.
"""

from __future__ import annotations

import torch


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef: float = 1.0) -> torch.Tensor:
    """[N, D], [M, D] -> [N, M] with k(x, y) = (x . y / D + coef)^degree."""
    return (x @ y.T / x.shape[1] + coef) ** degree


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased MMD^2 of two equal-size samples [m, D] (the diagonals k(x_i, x_i) are left out)."""
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise ValueError(f"need two samples of equal size >= 2, got {x.shape[0]} and {y.shape[0]}")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / m**2)


def kernel_inception_distance(features1, features2, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """(mean, std) of MMD^2_u over random subsets; subset_size is capped at the smaller set's size.
    Computed in float64 (the cubic kernel of 2048-d features loses digits in float32)."""
    x = torch.as_tensor(features1).double().cpu()
    y = torch.as_tensor(features2).double().cpu()
    m = min(subset_size, x.shape[0], y.shape[0])
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(num_subsets):
        pick_x = torch.randperm(x.shape[0], generator=generator)[:m]
        pick_y = torch.randperm(y.shape[0], generator=generator)[:m]
        values.append(mmd2_unbiased(x[pick_x], y[pick_y]))
    values = torch.tensor(values, dtype=torch.float64)
    return float(values.mean()), float(values.std()) if num_subsets > 1 else 0.0
