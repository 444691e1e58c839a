"""The main job end to end on tiny configs: train -> sample (text and image), exact resume, safe checkpoints."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffusion.errors import UserError
from diffusion.data.images import read_png_metadata
from diffusion import checkpoint as ckpt
from diffusion.training import loop, train
from tiny import TINY_TRAIN, run_in_process, run_script, tiny_train_cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny run shared by the tests of this file."""
    run = tmp_path_factory.mktemp("run")
    path = train(tiny_train_cfg(run, "trainer.max_steps=4", "trainer.sample_every=2"))
    return path


def test_run_directory_has_checkpoints_samples_and_metrics(trained):
    run = trained.parent.parent
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["step_0000002.ckpt"]
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_0000002.png", "step_0000004.png"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 and "lr" in r for r in records)
    payload = ckpt.load_checkpoint(trained)
    assert payload["step"] == 4 and payload["kind"] == "diffusion" and payload["tokenizer"]["vocabulary"][:2] == ["<pad>", "<bos>"]
    assert "model:" in payload["config"] and payload["data"]["shape"] == [3, 16, 16]


def test_sample_text_to_image_and_image_to_image_from_the_command_line(trained, tmp_path):
    out = tmp_path / "t2i"
    result = run_script("sample.py", f"ckpt={trained}", "prompt=a red bird, facing left", "num_images=3", "batch_size=2",
                        "steps=3", "seed=10", f"out_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == ["0000_seed10.png", "0001_seed11.png", "0002_seed12.png", "grid.png"]
    meta = read_png_metadata(out / "0001_seed11.png")
    assert meta["prompt"] == "a red bird, facing left" and meta["seed"] == 11 and meta["steps"] == 3
    cost = meta["cost"]  # each image's share of its batch: 3 guided network calls, their FLOPs, seconds, energy
    assert cost["network_calls"] == 3 and cost["flops"] > 0 and cost["seconds"] > 0 and cost["energy_j"] > 0
    assert cost["energy_source"].startswith(("measured", "estimated")) and "cost per image: " in result.stdout
    assert Image.open(out / "0001_seed11.png").size == (16, 16)

    # the second image of that batch, alone, from its recorded seed: the same pixels
    alone = tmp_path / "alone"
    result = run_in_process("sample.py", f"ckpt={trained}", "prompt=a red bird, facing left", "num_images=1",
                        f"seed={meta['seed']}", "steps=3", f"out_dir={alone}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(Image.open(alone / "0000_seed11.png").getdata()) == list(Image.open(out / "0001_seed11.png").getdata())

    # image-to-image from an RGBA picture of another size
    init = tmp_path / "init.png"
    Image.new("RGBA", (40, 30), (200, 20, 20, 128)).save(init)
    i2i = tmp_path / "i2i"
    result = run_in_process("sample.py", f"ckpt={trained}", "prompt=a blue duck", f"init_image={init}", "strength=0.5",
                        "num_images=2", "steps=4", f"out_dir={i2i}", "sampler=ddpm", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    meta = read_png_metadata(i2i / "0000_seed0.png")
    assert meta["init_image"] == str(init) and meta["strength"] == 0.5 and meta["sampler"] == "ddpm"
    assert (i2i / "grid.png").is_file()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = train(tiny_train_cfg(tmp_path / "straight", "trainer.max_steps=6", "trainer.checkpoint_every=3"))
    half = train(tiny_train_cfg(tmp_path / "half", "trainer.max_steps=3"))
    resumed = train(tiny_train_cfg(tmp_path / "resumed", "trainer.max_steps=6", f"resume={half}"))
    a, b = ckpt.load_checkpoint(straight), ckpt.load_checkpoint(resumed)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], atol=1e-6, rtol=0, msg=f"{key}.{name}")


def test_text_lr_scale_puts_the_text_encoder_in_its_own_group_and_survives_resume(tmp_path):
    """optim.text_lr_scale=4: the text encoder's parameters (and only they) train at 4x the UNet's learning
    rate at every step, and a resumed run keeps the groups and the scale."""
    first = train(tiny_train_cfg(tmp_path / "a", "trainer.max_steps=2", "optim.text_lr_scale=4", "optim.warmup_steps=0",
                                 "optim.decay=constant"))
    groups = ckpt.load_checkpoint(first)["optimizer"]["param_groups"]
    text_size = sum(v.numel() for k, v in ckpt.load_checkpoint(first)["model"].items() if k.startswith("text_encoder."))
    assert [g["lr_scale"] for g in groups] == [1.0, 4.0]
    assert groups[1]["lr"] == pytest.approx(4 * groups[0]["lr"])
    state = ckpt.load_checkpoint(first)["optimizer"]["state"]
    assert sum(state[i]["exp_avg"].numel() for i in groups[1]["params"]) == text_size
    resumed = train(tiny_train_cfg(tmp_path / "b", "trainer.max_steps=3", "optim.text_lr_scale=4", "optim.warmup_steps=0",
                                   "optim.decay=constant", f"resume={first}"))
    groups = ckpt.load_checkpoint(resumed)["optimizer"]["param_groups"]
    assert groups[1]["lr"] == pytest.approx(4 * groups[0]["lr"])


def test_resume_auto_finds_the_newest_loadable_checkpoint(tmp_path):
    runs = tmp_path / "outputs" / "2026-01-01"
    first = train(tiny_train_cfg(runs / "10-00-00", "trainer.max_steps=2"))
    (runs / "10-00-01" / "checkpoints").mkdir(parents=True)
    (runs / "10-00-01" / "checkpoints" / "last.ckpt").write_bytes(b"half a file")  # a newer, broken one
    resumed = train(tiny_train_cfg(runs / "10-00-02", "trainer.max_steps=4", "resume=auto"))
    assert ckpt.load_checkpoint(resumed)["step"] == 4
    assert ckpt.load_checkpoint(first)["step"] == 2


def test_a_save_killed_midway_never_replaces_the_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    ckpt.save_checkpoint({"kind": "test", "step": 1, "w": torch.ones(3)}, path)

    def dies_while_writing(payload, file):
        file.write(b"partial bytes")
        raise KeyboardInterrupt  # the process is interrupted in the middle of writing

    monkeypatch.setattr(ckpt.torch, "save", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({"kind": "test", "step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from diffusion.objectives import DDPMObjective

    real_loss = DDPMObjective.loss
    calls = {"n": 0}

    def loss_that_explodes(*args, **kwargs):
        calls["n"] += 1
        value = real_loss(*args, **kwargs)
        return value * float("nan") if calls["n"] > 3 else value

    monkeypatch.setattr(DDPMObjective, "loss", loss_that_explodes)
    with pytest.raises(UserError, match=r"NaN or infinite by step 4; .*last good checkpoint is .*last.ckpt \(step 2\)"):
        train(tiny_train_cfg(tmp_path, "trainer.max_steps=6", "trainer.log_every=2"))
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["step"] == 2


def test_sigterm_writes_a_checkpoint_and_exits_zero(tmp_path):
    import signal

    from tiny import signal_after_first_log

    returncode, err = signal_after_first_log(tmp_path, signal.SIGTERM)
    assert returncode == 0, err
    assert "stopping at step" in err
    step = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["step"]
    assert 2 <= step < 100000


def test_logger_wandb_writes_a_real_offline_run_without_an_account(tmp_path):
    """`logger=wandb` (offline by default) from the real command line, with no account, no API key and no
    terminal to prompt on: a wandb offline run appears in the run folder holding the logged loss and a sample
    grid, and metrics.jsonl is written as well."""
    import os
    import subprocess
    import sys

    from tiny import ROOT, TINY_TRAIN

    run = tmp_path / "run"
    home = tmp_path / "home"  # no ~/.netrc or wandb settings from this machine
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY_TRAIN, "logger=wandb", "trainer.sample_every=2",
                             f"hydra.run.dir={run}"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run / "wandb").iterdir()) if (run / "wandb").exists() else "no wandb folder"
    records = list(runs[0].glob("run-*.wandb"))
    assert len(records) == 1 and records[0].stat().st_size > 0
    data = records[0].read_bytes()
    assert b"loss" in data and b"samples" in data  # the logged scalars and the EMA sample grid
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_lr_decay_follows_the_time_budget_when_it_is_ahead_of_the_steps():
    """lr_at's progress is max(step fraction, time fraction) after warm-up; cosine to min_lr_ratio * lr."""
    from diffusion.training.optim import lr_at

    def cosine(progress):  # the closed form: lr * (r + (1 - r) * (1 + cos(pi p)) / 2), lr 1, r 0.1
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    args = dict(max_steps=110, lr=1.0, warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    assert lr_at(4, **args, time_progress=0.9) == pytest.approx(0.5)  # warm-up ignores the clock
    assert lr_at(60, **args, time_progress=0.0) == pytest.approx(cosine(0.5))  # steps ahead
    assert lr_at(60, **args, time_progress=0.25) == pytest.approx(cosine(0.5))  # steps still ahead
    assert lr_at(60, **args, time_progress=0.75) == pytest.approx(cosine(0.75))  # the clock ahead
    assert lr_at(20, **args, time_progress=3.0) == pytest.approx(0.1)  # over budget: the final lr


def test_a_run_fitted_to_its_time_budget_ends_annealed_and_finished(tmp_path):
    """trainer.fit_schedule_to_time: a run far too long for its budget stops at the budget with the lr at its
    final value (not cut mid-decay), draws its final sample grid, and records its training time."""
    budget_minutes = 0.1  # 6 s: room for a few steps after the 2 warm-up steps even on a busy machine
    cfg = tiny_train_cfg(tmp_path, "trainer.max_steps=100000", f"trainer.max_minutes={budget_minutes}",
                         "trainer.fit_schedule_to_time=true", "trainer.log_every=1", "trainer.checkpoint_every=0")
    path = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [row["lr"] for row in rows if "lr" in row]
    state = ckpt.load_checkpoint(path)
    assert 2 < state["step"] < 100000
    assert lrs[-1] == pytest.approx(cfg.optim.lr * cfg.optim.min_lr_ratio, rel=0.02)
    assert all(b <= a for a, b in zip(lrs[2:], lrs[3:]))  # decaying after the 2 warm-up steps
    assert state["train_seconds"] >= 60 * budget_minutes
    assert list((tmp_path / "samples").glob("step_*.png"))  # a finished run's final grid


def test_fit_schedule_to_time_without_a_budget_is_refused(tmp_path):
    with pytest.raises(UserError, match="needs a time budget: set trainer.max_minutes"):
        train(tiny_train_cfg(tmp_path, "trainer.fit_schedule_to_time=true"))


def test_a_fresh_start_in_a_folder_that_holds_a_run_is_refused_and_changes_nothing(tmp_path, capsys):
    """train.py into a run folder that already holds a run (no resume) would replace its last.ckpt and append to its
    metrics: refused in one line naming the step it holds; resume=auto continues it, and says when there is
    nothing left to train."""
    train(tiny_train_cfg(tmp_path, "trainer.max_steps=2", "trainer.log_every=1"))
    checkpoint, metrics = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "metrics.jsonl"
    kept = checkpoint.read_bytes(), metrics.read_bytes()
    with pytest.raises(UserError, match=r"already holds a run \(last.ckpt at step 2\); continue it with resume=auto"):
        train(tiny_train_cfg(tmp_path, "trainer.max_steps=4"))
    assert (checkpoint.read_bytes(), metrics.read_bytes()) == kept
    capsys.readouterr()
    train(tiny_train_cfg(tmp_path, "trainer.max_steps=2", "resume=auto"))
    assert "already at step 2 >= trainer.max_steps=2; nothing to train" in capsys.readouterr().out


def test_resuming_keeps_the_first_hydra_record_and_a_finished_run_is_left_as_it_is(tmp_path):
    """Hydra rewrites <run>/.hydra/overrides.yaml on every command into the folder: the first run's is kept (refused
    commands put it back), each resume's is recorded beside it, and a resume with nothing to train writes nothing."""
    run, hydra = tmp_path / "run", tmp_path / "run" / ".hydra"
    tiny = [*TINY_TRAIN, f"hydra.run.dir={run}", "trainer.log_every=1", "trainer.max_steps=2"]
    assert run_in_process("train.py", *tiny, cwd=tmp_path).returncode == 0
    first = (hydra / "overrides.yaml").read_bytes()
    for refused in (["trainer.max_steps=3"], ["resume=auto", "optim.lr=-1"]):  # a fresh start into the run; a bad value
        result = run_in_process("train.py", *tiny, *refused, cwd=tmp_path)
        assert result.returncode == 2 and (hydra / "overrides.yaml").read_bytes() == first, result.stderr
    assert run_in_process("train.py", *tiny, "trainer.max_steps=3", "resume=auto", cwd=tmp_path).returncode == 0
    assert (hydra / "overrides.yaml").read_bytes() == first
    assert "- resume='auto'" in (hydra / "resume-1-overrides.yaml").read_text()
    assert "trainer.max_steps=3" in (hydra / "resume-1-overrides.yaml").read_text()
    kept = [(run / name).read_bytes() for name in ("checkpoints/last.ckpt", "metrics.jsonl")]
    result = run_in_process("train.py", *tiny, "trainer.max_steps=3", "resume=auto", cwd=tmp_path)
    assert result.returncode == 0 and "already at step 3 >= trainer.max_steps=3; nothing to train" in result.stdout
    assert [(run / name).read_bytes() for name in ("checkpoints/last.ckpt", "metrics.jsonl")] == kept
    assert (hydra / "overrides.yaml").read_bytes() == first and (hydra / "resume-2-overrides.yaml").is_file()


def test_resuming_from_an_earlier_checkpoint_leaves_each_step_in_the_metrics_once(tmp_path):
    """A run stopped after its last checkpoint logs the steps past it again when resumed: metrics.jsonl keeps
    each step once (the lines past the checkpoint's step, and any line a crash cut short, are dropped first)."""
    train(tiny_train_cfg(tmp_path, "trainer.max_steps=4", "trainer.log_every=1", "trainer.checkpoint_every=2",
                         "trainer.keep_last=5"))
    with open(tmp_path / "metrics.jsonl", "a") as file:
        file.write('{"step": 5, "loss": 0.1')  # a line cut short by a crash
    earlier = tmp_path / "checkpoints" / "step_0000002.ckpt"
    train(tiny_train_cfg(tmp_path, "trainer.max_steps=4", "trainer.log_every=1", f"resume={earlier}"))
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_resume_auto_never_continues_an_unrelated_run(tmp_path, capsys):
    """A run folder given by hand is searched alone; in outputs/<date>/<time>/ only runs whose config fits count."""
    runs = tmp_path / "outputs" / "2026-01-01"
    train(tiny_train_cfg(runs / "09-00-00", "trainer.max_steps=2", "dataset.resolution=32", "model.channel_mult=[1,2]"))
    capsys.readouterr()
    train(tiny_train_cfg(runs / "09-30-00", "trainer.max_steps=2", "resume=auto"))  # 16 px: the 32 px run does not fit
    assert "no checkpoint of this model" in capsys.readouterr().out
    elsewhere = tmp_path / "my-run"
    train(tiny_train_cfg(elsewhere, "trainer.max_steps=2", "resume=auto"))  # by hand: never the runs under outputs/
    assert "no checkpoint of this model in " + str(elsewhere) + ";" in capsys.readouterr().out
