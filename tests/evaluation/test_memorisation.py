"""Memorisation analysis: planted exact and near copies of training images are found, new birds are not."""

import torch

from diffusion.data.toybirds import ToyBirds
from diffusion.evaluation.memorisation import (cosine_distances, memorisation_report, nearest, pixel_distances,
                                               render_neighbours)


def renders(split: str, count: int, seed: int = 0, start: int = 0) -> torch.Tensor:
    birds = ToyBirds(split=split, resolution=16, seed=seed, cache=False)
    return torch.stack([birds.image(i) for i in range(start, start + count)]).float() / 127.5 - 1


class MeanColour:
    """A stand-in feature extractor (per-channel means and quadrant means): cheap and deterministic."""

    name, dim = "mean-colour", 15

    def __call__(self, images):
        quadrants = torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)
        return torch.cat([images.mean((2, 3)), quadrants], dim=1) + 2  # shifted off the origin for cosine


def test_distances_and_nearest_neighbours():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.stack([torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.5), torch.ones(3, 4, 4)])
    d = pixel_distances(a, b)
    torch.testing.assert_close(d, torch.tensor([[0.0, 0.5, 1.0]] * 2))  # per-pixel RMS
    values, indices = nearest(d, k=2)
    assert indices[0].tolist() == [0, 1] and values[0].tolist() == [0.0, 0.5]
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(cosine_distances(f, f), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_planted_exact_and_near_copies_are_found_and_new_images_are_not(tmp_path):
    training = renders("train", 64)
    held_out = renders("val", 200)
    new = renders("test", 10)
    generator = torch.Generator().manual_seed(0)
    exact = training[[3, 17, 40]]
    near = (training[[5, 22, 50]] + 0.03 * torch.randn(3, 3, 16, 16, generator=generator)).clamp(-1, 1)
    brighter = (training[[8]] * 0.95 + 0.04).clamp(-1, 1)  # a global brightness change, as the renderer's own jitter
    generated = torch.cat([exact, near, brighter, new])  # 7 copies, then 10 new birds

    report = memorisation_report(generated, training, held_out, features=MeanColour(), quantile=0.01)
    assert report.pixel_index[:7].tolist() == [3, 17, 40, 5, 22, 50, 8]
    assert report.is_copy.tolist() == [True] * 7 + [False] * 10
    assert abs(report.copying_rate - 7 / 17) < 1e-6
    assert report.pixel_distance[:3].max() < 1e-6
    assert report.feature_index[:3].tolist() == [3, 17, 40]
    assert report.feature_distance[:3].max() < 1e-6
    # the ratio test (d1 / d2 < 1/3) agrees on the exact and near copies and rejects the new birds
    ratio = report.pixel_distance / report.pixel_second_distance
    assert (ratio[:7] < 1 / 3).all() and (ratio[7:] > 1 / 3).all()
    summary = report.summary()
    assert abs(summary["ratio_rate"] - 7 / 17) < 1e-6 and summary["pixel_threshold"] > 0.03

    path = render_neighbours(generated, training, report, tmp_path / "neighbours.png", max_rows=5)
    assert path.is_file() and path.stat().st_size > 1000


def test_a_single_training_image_still_has_a_threshold():
    training = renders("train", 1)
    held_out = renders("val", 50)
    generated = torch.cat([training, renders("test", 3)])
    report = memorisation_report(generated, training, held_out)
    assert report.pixel_second_distance is None and report.ratio_rate is None
    assert report.is_copy.tolist() == [True, False, False, False]
