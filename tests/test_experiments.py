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
