"""Memorisation: does a model draw its training images back?

For every generated image: its nearest training images in pixel space (L2, as a per-pixel RMS on
[-1, 1] images, i.e. ||a - b|| / sqrt(C H W)) and in feature space (cosine distance 1 - cos of probe
or Inception features), the distances, and whether it counts as a copy.

When is an image a copy? Two rules, both reported:

1. **Calibrated threshold** (the primary copying rate). Fresh real images of the same distribution
   that the model never saw ("held-out") show how close a *novel* image typically comes to the training
   set; this is the comparison of Meehan et al. 2020 ("A non-parametric test to detect data-copying in
   generative models"), who test whether generated images sit closer to the training set than held-out
   ones do. The threshold is the `quantile` (default 1%) of the held-out images' nearest-training-image
   distances, so a model that draws genuinely new images from the data distribution has a copying
   rate of about `quantile`, and a rate far above it means copying. Works for any training-set size,
   including one image.
2. **Ratio test** (Yoon et al. 2023; Gu et al. 2023, "On memorization in diffusion models", whose code
   counts a generated image as memorised when d(nearest) / d(second nearest) < 1/3 in pixel L2): an
   image far closer to one training image than to any other. Needs at least two training images;
   with very few training images every sample may pass it trivially, so read it with rule 1.

    report = memorisation_report(generated, training, held_out, features=ProbeExtractor())
    report.copying_rate, report.feature_copying_rate, report.ratio_rate
    render_neighbours(generated, training, report, "neighbours.png")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

RATIO_THRESHOLD = 1 / 3  # Gu et al. 2023 (following Yoon et al. 2023)
DEFAULT_QUANTILE = 0.01


def pixel_distances(a: torch.Tensor, b: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """RMS pixel distance [Na, Nb] between images [Na, C, H, W] and [Nb, C, H, W] (same shape). float64:
    cdist's fast path expands ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b, which cancels badly in float32
    (an exact copy would sit at ~1e-4 instead of 0)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    rows = [torch.cdist(part, b) for part in a.split(chunk)]
    return (torch.cat(rows) / a.shape[1] ** 0.5).float()


def cosine_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity [Na, Nb] between feature rows."""
    return 1 - F.normalize(a.float(), dim=1) @ F.normalize(b.float(), dim=1).T


def nearest(distances: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest distances per row and their column indices (k capped at the number of columns)."""
    return distances.topk(min(k, distances.shape[1]), dim=1, largest=False)


@dataclass
class MemorisationReport:
    pixel_index: torch.Tensor  # [N] nearest training image in pixel space
    pixel_distance: torch.Tensor  # [N] its RMS distance
    pixel_second_distance: torch.Tensor | None  # [N] distance to the second nearest (None: one training image)
    pixel_threshold: float  # calibrated on held-out images
    feature_index: torch.Tensor | None = None  # [N] nearest training image in feature space
    feature_distance: torch.Tensor | None = None  # [N] its cosine distance
    feature_threshold: float | None = None
    quantile: float = DEFAULT_QUANTILE
    held_out_pixel_distance: torch.Tensor | None = None  # [M] nearest-training distances of the held-out images
    extra: dict = field(default_factory=dict)

    @property
    def is_copy(self) -> torch.Tensor:
        return self.pixel_distance < self.pixel_threshold

    @property
    def copying_rate(self) -> float:
        """Fraction of generated images closer (pixels) to a training image than the threshold."""
        return float(self.is_copy.float().mean())

    @property
    def feature_copying_rate(self) -> float | None:
        if self.feature_distance is None:
            return None
        return float((self.feature_distance < self.feature_threshold).float().mean())

    @property
    def ratio_rate(self) -> float | None:
        """Fraction passing the ratio test d1 / d2 < 1/3 (None with a single training image)."""
        if self.pixel_second_distance is None:
            return None
        ratio = self.pixel_distance / self.pixel_second_distance.clamp(min=1e-12)
        return float((ratio < RATIO_THRESHOLD).float().mean())

    def summary(self) -> dict:
        return {"copying_rate": self.copying_rate, "feature_copying_rate": self.feature_copying_rate,
                "ratio_rate": self.ratio_rate, "pixel_threshold": self.pixel_threshold,
                "feature_threshold": self.feature_threshold, "quantile": self.quantile,
                "median_pixel_distance": float(self.pixel_distance.median()),
                "median_held_out_pixel_distance": (float(self.held_out_pixel_distance.median())
                                                   if self.held_out_pixel_distance is not None else None)}


def calibrated_threshold(held_out_nearest: torch.Tensor, quantile: float = DEFAULT_QUANTILE) -> float:
    """The `quantile` of held-out images' nearest-training distances (rule 1 above)."""
    return float(torch.quantile(held_out_nearest.double(), quantile))


@torch.no_grad()
def memorisation_report(
    generated: torch.Tensor,  # [N, 3, H, W] in [-1, 1]
    training: torch.Tensor,  # [M, 3, H, W] the training images (all of them, or a large sample)
    held_out: torch.Tensor,  # [K, 3, H, W] real images of the same distribution the model never saw
    features=None,  # a feature extractor (diffusion/evaluation/features.py), or None for pixels only
    quantile: float = DEFAULT_QUANTILE,
) -> MemorisationReport:
    generated, training, held_out = generated.float(), training.float(), held_out.float()
    pixel_values, pixel_indices = nearest(pixel_distances(generated, training))
    held_pixel = nearest(pixel_distances(held_out, training), k=1)[0][:, 0]
    report = MemorisationReport(
        pixel_index=pixel_indices[:, 0], pixel_distance=pixel_values[:, 0],
        pixel_second_distance=pixel_values[:, 1] if pixel_values.shape[1] > 1 else None,
        pixel_threshold=calibrated_threshold(held_pixel, quantile), quantile=quantile,
        held_out_pixel_distance=held_pixel)
    if features is not None:
        train_features = features(training)
        feature_values, feature_indices = nearest(cosine_distances(features(generated), train_features), k=1)
        held_feature = nearest(cosine_distances(features(held_out), train_features), k=1)[0][:, 0]
        report.feature_index, report.feature_distance = feature_indices[:, 0], feature_values[:, 0]
        report.feature_threshold = calibrated_threshold(held_feature, quantile)
    return report


def render_neighbours(generated: torch.Tensor, training: torch.Tensor, report: MemorisationReport, path,
                      max_rows: int = 8, order: str = "closest") -> Path:
    """A PNG: each row a generated image, its nearest training image in pixels and (if computed) in
    features, with the distances and the copy verdict. `order`: closest first, or as generated ("index")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion.tools.inspection import to_display

    n = generated.shape[0]
    rows = report.pixel_distance.argsort()[:max_rows].tolist() if order == "closest" else list(range(min(n, max_rows)))
    columns = 3 if report.feature_index is not None else 2
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.2 * columns, 2.3 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        j = int(report.pixel_index[i])
        verdict = "COPY" if bool(report.is_copy[i]) else "new"
        panels = [(generated[i], f"generated {i} ({verdict})"),
                  (training[j], f"pixel NN #{j}\nRMS {float(report.pixel_distance[i]):.3f}")]
        if report.feature_index is not None:
            k = int(report.feature_index[i])
            panels.append((training[k], f"feature NN #{k}\ncos dist {float(report.feature_distance[i]):.3f}"))
        for c, (image, title) in enumerate(panels):
            axes[r][c].imshow(to_display(image))
            axes[r][c].set_title(title, fontsize=8)
            axes[r][c].axis("off")
    figure.suptitle(f"copy threshold: RMS < {report.pixel_threshold:.3f} ({report.quantile:.0%} of held-out)", fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
