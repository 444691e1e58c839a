"""Every experiment script runs end to end in --smoke mode (tiny models, a few images) and writes its README,
results.json and figures; the evaluation command gives the same scores split over two torchrun processes.
Slow (20-40 s each): `pytest -m slow tests/test_experiments.py`."""

import json
import os
import subprocess
import sys

import pytest

from tiny import ROOT

EXPERIMENTS = ["bias", "guidance", "img2img_strength", "memorisation", "samplers", "schedules"]


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_smoke_run(name, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "DIFFUSION_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / name / "run.py"), "--smoke", "--out",
                             str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "Smoke run" in readme and "| ---" not in readme and "|---|" in readme
    for figure in [line[line.index("(") + 1:-1] for line in readme.splitlines() if line.startswith("![")]:
        assert (tmp_path / "out" / figure).is_file(), figure
    assert json.loads((tmp_path / "out" / "results.json").read_text())["smoke"] is True


@pytest.mark.slow
def test_evaluation_split_over_two_processes_matches_one(tiny_checkpoint, quick_probe_cache, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "DIFFUSION_CACHE": str(quick_probe_cache)}
    common = ["-m", "diffusion.evaluation", "--ckpt", str(tiny_checkpoint), "--num-images", "10", "--batch-size", "4",
              "--steps", "3", "--kid-subsets", "3", "--device", "cpu"]
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env, timeout=300)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *common,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / run / "evaluation.json").read_text()) for run in ("one", "two"))
    assert b["processes"] == 2 and a["adherence"] == b["adherence"]
    assert b["fid"] == pytest.approx(a["fid"], rel=1e-5)


def test_the_scaling_seeds_table_averages_over_seeds_and_pairs_runs_seed_by_seed(two_step_checkpoint, tmp_path):
    """experiments/scaling/seeds.py on a round of four runs (two names x seeds 0 and 1, a third seed only for one):
    each cell is the mean over its seeds, and the paired difference uses only the seeds both runs have."""
    import shutil

    scores = {("unet_c16", 0): (0.70, 500.0), ("unet_c16", 1): (0.80, 520.0), ("unet_c16", 2): (0.90, 510.0),
              ("dit_d96", 0): (0.60, 700.0), ("dit_d96", 1): (0.64, 640.0)}
    for (name, seed), (adherence, fid) in scores.items():
        run = tmp_path / "round" / f"{name}_s{seed}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "eval").mkdir()
        shutil.copy(two_step_checkpoint, run / "checkpoints" / "last.ckpt")
        (run / "metrics.jsonl").write_text(json.dumps({"step": 50, "loss": 0.1 + seed}) + "\n")
        (run / "eval" / "evaluation.json").write_text(json.dumps({"adherence_mean": adherence, "fid": fid}))
    (tmp_path / "round" / "dit_d96_s2").mkdir()  # not evaluated: left out with a line, not a crash
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "scaling" / "seeds.py"), str(tmp_path / "round"),
                             "--json", str(tmp_path / "seeds.json"), "--runs", "unet_c16", "dit_d96"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dit_d96_s2: no eval/evaluation.json" in result.stderr
    table = json.loads((tmp_path / "seeds.json").read_text())
    unet, dit = table["summaries"]["unet_c16"], table["summaries"]["dit_d96"]
    assert unet["seeds"] == [0, 1, 2] and dit["seeds"] == [0, 1]
    assert unet["adherence_mean"]["mean"] == pytest.approx(0.80) and dit["fid"]["mean"] == pytest.approx(670.0)
    assert "t_interval" in unet["adherence_mean"] and "t_interval" not in dit["adherence_mean"]  # 3 seeds vs 2
    (difference,) = table["differences"]
    assert (difference["a"], difference["b"], difference["seeds"]) == ("unet_c16", "dit_d96", [0, 1])
    assert difference["adherence_mean"]["values"] == pytest.approx([0.10, 0.16])
    assert difference["loss"]["values"] == pytest.approx([0.0, 0.0])
