"""Fréchet distance between Gaussian fits of two feature sets (FID, Heusel et al. 2017), and cached
reference statistics.

    FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})       (Dowson & Landau 1982; Heusel et al. eq. 6)

The matrix square root: S_1 S_2 is not symmetric, and `scipy.linalg.sqrtm` of it can return complex
parts and lose accuracy when the covariances are singular (fewer images than feature dimensions).
Only its trace is needed, and S_1 S_2 = S_1^{1/2} (S_1^{1/2} S_2 S_1^{1/2}) S_1^{-1/2} is similar to the
symmetric positive semi-definite M = S_1^{1/2} S_2 S_1^{1/2}, so Tr (S_1 S_2)^{1/2} = sum_i sqrt(lambda_i(M)):
two symmetric eigen-decompositions in float64, with eigenvalues at round-off level (below
d * eps * the largest, negative ones included) set to zero.

Reference statistics (mean, covariance and the features themselves, which KID needs) are cached on
disk keyed by extractor (network + weights) + dataset + resolution + count, written atomically and
read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from diffusion.data.cache import cache_key, save_atomic

STATS_FORMAT_VERSION = 1


def numerically_nonnegative(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off removed: those below d * eps * max (negative ones
    included) are zero. Without this, sqrt turns 1e-16-sized noise into 1e-8-sized errors."""
    tolerance = values.size * np.finfo(np.float64).eps * max(float(np.abs(values).max(initial=0.0)), 1e-300)
    return np.where(values > tolerance, values, 0.0)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(numerically_nonnegative(values))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr (S_1 S_2)^{1/2} via the similar symmetric matrix S_1^{1/2} S_2 S_1^{1/2}."""
    root1 = psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    return float(np.sqrt(numerically_nonnegative(np.linalg.eigvalsh((middle + middle.T) / 2))).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2, sigma1, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shapes do not match: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


def distance_to(mu_ref, sigma_ref):
    """(project, fid_of_projected) for FID against fixed reference statistics, for the bootstrap's few hundred
    calls: `project(features [N, D])` gives rows [N, 2D] = [X, X R] (R: the reference's square root, computed once),
    and `fid_of_projected(rows)` the FID of those images, so a resample of images is a resample of rows and X R is
    never recomputed. With Y = (X R - mean) / sqrt(N - 1), the middle matrix R S R is Y^T Y, whose nonzero
    eigenvalues are those of the smaller of Y Y^T [N, N] and Y^T Y [D, D] (Inception: 2048-d, usually N < D).
    fid_of_projected(project(x)) equals `frechet_distance` of `gaussian_statistics(x)` and the reference."""
    mu_ref, sigma_ref = np.asarray(mu_ref, dtype=np.float64), np.asarray(sigma_ref, dtype=np.float64)
    root_ref, trace_ref, d = psd_sqrt(sigma_ref), float(np.trace(sigma_ref)), mu_ref.shape[0]

    def project(features) -> np.ndarray:
        x = np.asarray(torch.as_tensor(features).double().cpu())
        if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] != d:
            raise ValueError(f"need features [N >= 2, {d}], got shape {x.shape}")
        return np.concatenate([x, x @ root_ref], axis=1)  # [N, 2D]

    def fid_of_projected(rows: np.ndarray) -> float:
        x, x_root = rows[:, :d], rows[:, d:]  # [N, D] each
        n, mu = x.shape[0], x.mean(axis=0)
        y = (x_root - x_root.mean(axis=0)) / np.sqrt(n - 1)  # [N, D]
        gram = y @ y.T if n < d else y.T @ y
        trace_sigma = float(((x - mu) ** 2).sum() / (n - 1))
        trace_sqrt = float(np.sqrt(numerically_nonnegative(np.linalg.eigvalsh((gram + gram.T) / 2))).sum())
        difference = mu - mu_ref
        return float(difference @ difference + trace_sigma + trace_ref - 2 * trace_sqrt)

    return project, fid_of_projected


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], in float64."""
    features = np.asarray(torch.as_tensor(features).double().cpu())
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def fid_from_features(features1, features2) -> float:
    return frechet_distance(*gaussian_statistics(features1), *gaussian_statistics(features2))


# ---------------------------------------------------------------------------------------------- cached statistics


def default_stats_dir() -> Path:
    base = os.environ.get("DIFFUSION_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "diffusion-from-scratch") / "fid-stats"


def stats_path(extractor_name: str, dataset: str, resolution: int, count: int, cache_dir=None) -> Path:
    key = cache_key({"kind": "reference-statistics", "version": STATS_FORMAT_VERSION, "extractor": extractor_name,
                     "dataset": dataset, "resolution": int(resolution), "count": int(count)})
    folder = Path(cache_dir) if cache_dir is not None else default_stats_dir()
    return folder / f"{extractor_name.split('-')[0]}-r{resolution}-n{count}-{key}.pt"


def extract_all(extractor, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Features [N, D] of every image of an iterable of image batches [B, 3, H, W] in [-1, 1]."""
    return torch.cat([extractor(batch) for batch in batches])


def reference_statistics(
    extractor,  # FeatureExtractor: name, dim, __call__
    dataset: str,  # names the image source in the cache key, e.g. "toybirds-val-seed0-renderer1"
    resolution: int,
    count: int,
    images: Callable[[], Iterable[torch.Tensor]],  # called only on a cache miss: yields batches of the `count` images
    cache_dir=None,
) -> dict:
    """{"mu", "sigma", "features", ...} of `count` reference images, computed once and cached."""
    path = stats_path(extractor.name, dataset, resolution, count, cache_dir)
    expected = {"format_version": STATS_FORMAT_VERSION, "extractor": extractor.name, "dataset": dataset,
                "resolution": int(resolution), "count": int(count)}
    if path.is_file():
        try:
            stats = torch.load(path, map_location="cpu", weights_only=True)
            if all(stats.get(k) == v for k, v in expected.items()):
                return stats
        except Exception:
            pass  # unreadable or foreign: recompute and replace it
    features = extract_all(extractor, images())
    if features.shape[0] != count:
        raise ValueError(f"the reference image source gave {features.shape[0]} images, expected {count}")
    mu, sigma = gaussian_statistics(features)
    stats = {**expected, "mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma), "features": features.float()}
    save_atomic(stats, path)
    return stats
