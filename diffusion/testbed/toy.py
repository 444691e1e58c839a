"""The testbed's mixtures: a fixed 2-D one to look at, and seeded random ones in d dimensions.

`toy_mixture_2d` follows the shape of the 2-D toy example in Karras et al. 2024 ("Guiding a diffusion model with a
bad version of itself", section 3 and Fig. 1): two classes, each a branching structure built from thin,
elongated (anisotropic) Gaussians, so that the density has narrow ridges a sampler can miss or blur, and
guidance can pull samples into the core of one class. It is a small independent construction (12 components,
weights proportional to branch length), not the paper's 7-level fractal; the data standard deviation is about
0.5, EDM's sigma_data.
"""

from __future__ import annotations

import math

import torch

from diffusion.errors import UserError
from diffusion.testbed.mixture import GaussianMixture

# (class, start point, angle in degrees, length, width): one straight branch of the 2-D toy
TOY_BRANCHES = (
    (0, (0.05, 0.05), 45.0, 0.60, 0.040),  # class 0 trunk, up and right
    (0, None, 85.0, 0.45, 0.030),  # its two sub-branches start at the trunk's end
    (0, None, 5.0, 0.45, 0.030),
    (1, (-0.05, -0.05), 225.0, 0.50, 0.040),  # class 1 trunk, down and left
    (1, None, 270.0, 0.40, 0.025),
    (1, None, 180.0, 0.40, 0.025),
)
COMPONENTS_PER_BRANCH = 2


def branch_components(start, angle_degrees: float, length: float, width: float, n: int):
    """n Gaussians tiling a straight segment: std length / (2n) along it, `width` across it; weight ~ length."""
    direction = torch.tensor([math.cos(math.radians(angle_degrees)), math.sin(math.radians(angle_degrees))],
                             dtype=torch.float64)
    across = torch.stack([-direction[1], direction[0]])
    start = torch.as_tensor(start, dtype=torch.float64)
    means = torch.stack([start + direction * length * (i + 0.5) / n for i in range(n)])  # [n, 2]
    covariance = (length / (2 * n)) ** 2 * torch.outer(direction, direction) + width**2 * torch.outer(across, across)
    return means, covariance.expand(n, 2, 2), torch.full((n,), length / n, dtype=torch.float64)


def toy_mixture_2d() -> GaussianMixture:
    """Two classes of branching ridges (12 anisotropic components) in the plane."""
    means, covariances, weights, classes = [], [], [], []
    ends = {}  # class -> end of its trunk
    for label, start, angle, length, width in TOY_BRANCHES:
        start = ends[label] if start is None else start
        m, c, w = branch_components(start, angle, length, width, COMPONENTS_PER_BRANCH)
        if label not in ends:
            ends[label] = torch.as_tensor(start, dtype=torch.float64) + length * torch.tensor(
                [math.cos(math.radians(angle)), math.sin(math.radians(angle))], dtype=torch.float64)
        means.append(m), covariances.append(c), weights.append(w), classes.append(torch.full((len(w),), label))
    return GaussianMixture(torch.cat(weights), torch.cat(means), torch.cat(covariances), torch.cat(classes))


def random_mixture(dim: int, num_components: int = 8, num_classes: int = 2, seed: int = 0, spread: float = 1.5,
                   std_range: tuple[float, float] = (0.05, 0.3)) -> GaussianMixture:
    """A seeded mixture in `dim` dimensions: means ~ spread N(0, I / dim) (so |mu| ~ spread), each covariance a random
    rotation of axis standard deviations log-uniform in std_range, weights uniform in [0.5, 1.5] before
    normalising, component k in class k mod num_classes."""
    if dim < 1 or not 1 <= num_classes <= num_components:
        raise UserError(f"random_mixture needs dim >= 1 and 1 <= num_classes <= num_components, "
                        f"got dim={dim}, num_components={num_components}, num_classes={num_classes}")
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(num_components, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    rotations, _ = torch.linalg.qr(torch.randn(num_components, dim, dim, generator=g, dtype=torch.float64))
    low, high = math.log(std_range[0]), math.log(std_range[1])
    stds = torch.exp(low + (high - low) * torch.rand(num_components, dim, generator=g, dtype=torch.float64))
    covariances = torch.einsum("kij,kj,klj->kil", rotations, stds**2, rotations)
    covariances = (covariances + covariances.transpose(1, 2)) / 2  # exactly symmetric
    weights = 0.5 + torch.rand(num_components, generator=g, dtype=torch.float64)
    return GaussianMixture(weights, means, covariances, torch.arange(num_components) % num_classes)


def broadened(mixture: GaussianMixture, s: float) -> GaussianMixture:
    """The same mixture with every component widened, C_k + s^2 I: a model whose only error is blur of a known size
    (a weaker model of the data: autoguidance's guide, or a main model that has not learnt the ridges' width)."""
    if not s >= 0:
        raise UserError(f"broadened needs s >= 0, got {s}")
    wider = mixture.covariances + s**2 * torch.eye(mixture.dim, dtype=torch.float64)
    return GaussianMixture(mixture.weights, mixture.means, wider, mixture.classes)
