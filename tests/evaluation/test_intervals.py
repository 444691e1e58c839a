"""The bootstrap intervals against a closed form and for coverage; the evaluation command's intervals,
--seeds and --guidance on the shared tiny checkpoint."""

import json
import math

import numpy as np
import pytest

from diffusion.evaluation.intervals import (adherence_intervals, bootstrap_interval, mean_adherence_of_hits,
                                           paired_bootstrap_interval, seed_summary)


def test_bootstrap_interval_of_a_bernoulli_mean_matches_the_normal_interval():
    # n = 400 Bernoulli(0.8): normal interval p ± 1.96 sqrt(p(1-p)/n) = ± 3.92 points. Stated tolerance: each bound
    # within 1 point (the bootstrap's Monte Carlo error at B = 1000 is ~0.3 points; skew of the binomial ~0.1)
    rng = np.random.default_rng(0)
    values = (rng.random(400) < 0.8).astype(float)
    p, n = values.mean(), len(values)
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    low, high = bootstrap_interval(values, np.mean, resamples=1000, seed=1)
    assert low == pytest.approx(p - half, abs=0.01) and high == pytest.approx(p + half, abs=0.01)
    # the vectorised adherence bootstrap agrees on one attribute
    intervals = adherence_intervals(values[:, None], ["pose"], resamples=1000, seed=1)
    assert intervals["adherence_interval"]["pose"] == pytest.approx([p - half, p + half], abs=0.01)
    assert intervals["adherence_mean"] == pytest.approx(p)


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    # 200 synthetic datasets of 100 Bernoulli(0.7) values; the 95% interval should cover 0.7 in 90-99% of them
    # (a binomial(200, 0.95) lies in 180-198 with probability > 0.99; the percentile bootstrap undercovers a little)
    rng = np.random.default_rng(2)
    covered = 0
    for k in range(200):
        values = (rng.random(100) < 0.7).astype(float)
        interval = adherence_intervals(values[:, None], ["a"], resamples=1000, seed=k)["adherence_interval"]["a"]
        covered += interval[0] <= 0.7 <= interval[1]
    assert 180 <= covered <= 198, covered


def test_adherence_intervals_skip_unmentioned_attributes_and_bracket_the_point():
    hits = np.array([[1, np.nan], [0, 1], [1, 1], [1, np.nan], [0, 0], [1, 1]] * 10, dtype=float)
    result = adherence_intervals(hits, ["colour", "pose"], resamples=500)
    assert result["adherence_mean"] == pytest.approx((40 / 60 + 30 / 40) / 2)
    low, high = result["adherence_mean_interval"]
    assert low < result["adherence_mean"] < high
    for a, name in enumerate(["colour", "pose"]):
        low, high = result["adherence_interval"][name]
        assert low <= np.nanmean(hits[:, a]) <= high


def test_seed_summary_t_interval_needs_three_seeds():
    two = seed_summary([0.8, 0.9])
    assert two["mean"] == pytest.approx(0.85) and (two["min"], two["max"]) == (0.8, 0.9) and "t_interval" not in two
    three = seed_summary([1.0, 2.0, 3.0])  # std 1, t_{0.975, 2} = 4.303: mean ± 4.303 / sqrt(3)
    assert three["t_interval"] == pytest.approx([2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)], abs=1e-3)


def run_evaluation(tiny_checkpoint, quick_probe_cache, tmp_path, monkeypatch, *extra):
    from tiny import run_in_process  # in this process: saves the interpreter's start and the imports

    monkeypatch.setenv("DIFFUSION_CACHE", str(quick_probe_cache))
    return run_in_process("diffusion.evaluation", "--ckpt", str(tiny_checkpoint), "--num-images", "12", "--batch-size", "6",
                      "--steps", "3", "--kid-subsets", "4", "--kid-subset-size", "8", "--device", "cpu",
                      "--fid-resamples", "50", *extra, cwd=tmp_path)


def test_evaluation_reports_intervals_and_the_spread_over_seeds(tiny_checkpoint, quick_probe_cache, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    result = run_evaluation(tiny_checkpoint, quick_probe_cache, tmp_path, monkeypatch, "--seeds", "0", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| mean |" in result.stdout and "| min-max |" in result.stdout
    report = json.loads((out / "evaluation.json").read_text())
    assert report["seeds"] == [0, 1] and len(report["per_seed"]) == 2
    for row in report["per_seed"]:
        low, high = row["adherence_mean_interval"]
        assert low <= row["adherence_mean"] <= high
        for name, value in row["adherence"].items():
            assert row["adherence_interval"][name][0] <= value <= row["adherence_interval"][name][1]
        assert row["fid_interval"][0] <= row["fid"] <= row["fid_interval"][1]
        assert f"| {row['seed']} |" in result.stdout
    assert report["fid"] == pytest.approx(np.mean([row["fid"] for row in report["per_seed"]]))
    assert isinstance(report["adherence"]["pose"], float)  # the key cost.py reads keeps its shape


def test_evaluation_runs_with_apg_guidance(tiny_checkpoint, quick_probe_cache, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    result = run_evaluation(tiny_checkpoint, quick_probe_cache, tmp_path, monkeypatch, "--guidance", "apg",
                            "--guidance-option", "eta=0.2", "--guidance-option", "r=null", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "evaluation.json").read_text())
    assert report["guidance"] == {"name": "apg", "eta": 0.2, "r": None}
    assert "%  [" not in result.stdout and "% [" in result.stdout  # "83.5% [80.1, 86.7]"


@pytest.mark.parametrize("extra, message", [
    (["--guidance", "bogus"], "unknown --guidance method 'bogus'"),
    (["--guidance", "3.0"], "--guidance-scale 3.0"),
    (["--guidance", "apg", "--guidance-option", "phi=0.5"], "has no option 'phi'"),
    (["--guidance", "apg", "--guidance-option", "eta"], "takes key=value"),
    (["--guidance", "apg", "--guidance-option", "eta=-1"], "guidance.eta must be a number >= 0"),
    (["--guidance", "interval", "--guidance-option", "sigma_low=5", "--guidance-option", "sigma_high=1"], "sigma_low < sigma_high"),
])
def test_bad_guidance_is_one_line_before_any_work(tiny_checkpoint, tmp_path, monkeypatch, extra, message):
    from tiny import run_in_process

    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path / "empty-cache"))  # no probe here: any work would train one
    result = run_in_process("diffusion.evaluation", "--ckpt", str(tiny_checkpoint), "--num-images", "4", "--device", "cpu",
                        *extra, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "empty-cache").exists()


@pytest.mark.parametrize("n, d", [(300, 16), (20, 64)])  # more images than dimensions, and fewer (the Gram route)
def test_distance_to_a_fixed_reference_equals_the_frechet_distance(n, d):
    from diffusion.evaluation.fid import distance_to, frechet_distance, gaussian_statistics

    rng = np.random.default_rng(n)
    reference = rng.standard_normal((500, d)) * rng.uniform(0.5, 2, d)
    features = rng.standard_normal((n, d)) + 0.3
    mu_ref, sigma_ref = gaussian_statistics(reference)
    expected = frechet_distance(*gaussian_statistics(features), mu_ref, sigma_ref)
    project, fid_of_projected = distance_to(mu_ref, sigma_ref)
    assert fid_of_projected(project(features)) == pytest.approx(expected, rel=1e-9)


def test_fid_interval_is_recentred_on_the_point_estimate():
    # real-like data: the raw percentile interval of a resampled FID sits above the point (resampling repeats
    # images, which adds bias); recentred, it brackets the point
    from diffusion.evaluation.fid import distance_to, gaussian_statistics

    rng = np.random.default_rng(5)
    mu_ref, sigma_ref = gaussian_statistics(rng.standard_normal((2000, 8)))
    project, fid = distance_to(mu_ref, sigma_ref)
    rows = project(rng.standard_normal((60, 8)))
    raw = bootstrap_interval(rows, fid, resamples=200)
    low, high = bootstrap_interval(rows, fid, resamples=200, recentre=True)
    assert raw[0] > fid(rows) and low <= fid(rows) <= high


def test_a_paired_interval_cancels_the_spread_two_settings_share():
    # two settings on the same 200 prompts and seeds: b = a + 0.3 + small noise, a itself widely spread. Unpaired,
    # the two means' intervals overlap; paired, the difference's interval is narrow, brackets 0.3 and excludes 0
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 1)) * 3.0
    b = a + 0.3 + 0.1 * rng.standard_normal((200, 1))
    mean = lambda rows: float(rows.mean())  # noqa: E731
    low_a, high_a = bootstrap_interval(a, mean)
    low_b, high_b = bootstrap_interval(b, mean)
    assert low_b < high_a  # unpaired: no difference by the overlap rule
    low, high = paired_bootstrap_interval(b, a, mean)
    assert 0 < low < 0.3 < high < 0.33
    assert paired_bootstrap_interval(a, a, mean) == (0.0, 0.0)  # a setting against itself: exactly no difference
    with pytest.raises(ValueError, match="paired images"):
        paired_bootstrap_interval(a, a[:10], mean)


def test_the_mean_adherence_of_hits_counts_only_the_images_that_mention_an_attribute():
    nan = float("nan")
    hits = np.array([[1.0, nan], [0.0, 1.0], [1.0, 1.0], [nan, 0.0]])  # attribute 0: 2 of 3, attribute 1: 2 of 3
    assert mean_adherence_of_hits(hits) == pytest.approx(2 / 3)
    hits[0, 1] = 0.0  # attribute 1 now 2 of 4
    assert mean_adherence_of_hits(hits) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_an_existing_evaluation_is_never_replaced_without_overwrite(tiny_checkpoint, tmp_path, monkeypatch):
    from tiny import run_in_process

    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path / "empty-cache"))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "evaluation.json").write_text("an earlier result")
    result = run_in_process("diffusion.evaluation", "--ckpt", str(tiny_checkpoint), "--num-images", "4", "--device", "cpu",
                            "--out", str(tmp_path / "eval"), cwd=tmp_path)
    assert result.returncode == 2 and "already exists; add --overwrite" in result.stderr.strip().splitlines()[-1]
    assert (tmp_path / "eval" / "evaluation.json").read_text() == "an earlier result"
    assert not (tmp_path / "empty-cache").exists()  # refused before a probe trained
