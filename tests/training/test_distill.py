"""task=distill end to end on tiny sizes: a student distilled from a tiny teacher is an ordinary checkpoint that
says whose student it is, resumes, and is sampled by sample.py at 2 steps with one network call a step."""

from __future__ import annotations

import json

import torch
from omegaconf import OmegaConf

from diffusion.checkpoint import load_checkpoint
from diffusion.training import train
from tiny import run_in_process, tiny_train_cfg


def test_a_distilled_student_is_a_checkpoint_that_samples_in_two_steps(tmp_path):
    teacher = train(tiny_train_cfg(tmp_path / "teacher", "trainer.max_steps=2"))
    distil = ["task=distill", f"teacher={teacher}", "distill.grid_points=4", "trainer.checkpoint_every=1"]
    student = train(tiny_train_cfg(tmp_path / "student", *distil, "trainer.max_steps=1"))

    payload = load_checkpoint(student, kind="diffusion")
    config = OmegaConf.create(payload["config"])
    teacher_payload = load_checkpoint(teacher)
    assert config.task == "distill" and config.teacher == str(teacher.resolve())
    assert config.sampler._target_ == "diffusion.samplers.ConsistencySampler" and config.sampler.grid_points == 4
    assert config.model == OmegaConf.create(teacher_payload["config"]).model  # the teacher's network
    assert payload["data"] == teacher_payload["data"] and set(payload["target"]) == set(payload["model"])
    # the student starts from the teacher's EMA weights: one small step away from them, not a fresh network
    moved = max(float((payload["model"][k].float() - w.float()).abs().max()) for k, w in teacher_payload["ema"].items())
    assert 0 < moved < 0.1
    logged = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert torch.isfinite(torch.tensor(logged[-1]["loss"])) and logged[-1]["train_flops"] > 0

    resumed = train(tiny_train_cfg(tmp_path / "student", *distil, "trainer.max_steps=2", "resume=auto"))
    assert load_checkpoint(resumed)["step"] == 2

    out = tmp_path / "samples"
    result = run_in_process("sample.py", f"ckpt={resumed}", "prompt=a red bird", "steps=2", "num_images=2",
                            f"out_dir={out}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / "grid.png").is_file() and len(list(out.glob("0*_seed*.png"))) == 2
    assert "(2 network calls)" in result.stdout  # guidance is distilled in: one pass a step
