"""Faults and silently ignored input: a full disk while a checkpoint or an image is written is one line and keeps
the previous checkpoint; sample.py streams (each batch written as it finishes) and an interrupted job keeps what it
wrote and says how many; a key with no effect is warned; prompts are literal text."""

import errno
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from diffusion import checkpoint as ckpt
from diffusion.data.images import read_png_metadata
from diffusion.errors import UserError
from tiny import run_in_process


@pytest.fixture(scope="module")
def model(two_step_checkpoint) -> Path:
    return two_step_checkpoint


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_a_checkpoint_is_written_is_one_line_and_the_previous_one_stays(tmp_path, monkeypatch):
    path = ckpt.save_checkpoint({"kind": "vae", "step": 1, "model": {"w": torch.ones(3)}, "config": ""}, tmp_path / "last.ckpt")
    kept = path.read_bytes()

    def half_then_full(payload, file):  # the disk fills part-way through the file
        file.write(b"half a checkpoint")
        disk_full()

    monkeypatch.setattr(ckpt.torch, "save", half_then_full)
    with pytest.raises(UserError, match=r"cannot write .*last.ckpt: No space left on device; last.ckpt is unchanged"):
        ckpt.save_checkpoint({"kind": "vae", "step": 2, "model": {"w": torch.zeros(3)}, "config": ""}, path)
    assert path.read_bytes() == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left behind


def test_a_full_disk_while_an_image_is_written_is_one_line(model, tmp_path, monkeypatch):
    monkeypatch.setattr("PIL.Image.Image.save", disk_full)
    result = run_in_process("sample.py", f"ckpt={model}", "prompt=a red bird", "steps=2", "num_images=1",
                            f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (f"error: cannot write {tmp_path / 'out' / '0000_seed0.png'}: "
                                                      f"No space left on device")
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("stop", ["KeyboardInterrupt", "SIGTERM"])
def test_a_huge_job_writes_each_batch_at_once_and_an_interrupt_keeps_what_was_written(model, tmp_path, monkeypatch, stop):
    """num_images=10**8 starts writing at once (nothing is planned per image up front); stopped in its third batch,
    it keeps the four images of the first two and says so."""
    import diffusion.sampling

    calls = []

    def fake_generate_images(model, sampler, prompts, seeds, *, shape, **kwargs):
        calls.append(list(seeds))
        if len(calls) == 3:
            if stop == "SIGTERM":
                signal.raise_signal(signal.SIGTERM)
            raise KeyboardInterrupt
        return torch.zeros(len(prompts), *shape)

    monkeypatch.setattr(diffusion.sampling, "generate_images", fake_generate_images)
    out = tmp_path / "out"
    result = run_in_process("sample.py", f"ckpt={model}", "prompt=a red bird", "num_images=100000000", "batch_size=2",
                            "steps=2", f"out_dir={out}", cwd=tmp_path)
    assert result.returncode == 130, result.stderr
    assert calls == [[0, 1], [2, 3], [4, 5]]
    assert sorted(p.name for p in out.iterdir()) == ["0000_seed0.png", "0001_seed1.png", "0002_seed2.png", "0003_seed3.png"]
    assert f"interrupted: kept the 4 of 100000000 images written to {out}" in result.stderr
    assert signal.getsignal(signal.SIGTERM) is not None and "Traceback" not in result.stderr


def test_prompts_are_literal_text_and_unknown_words_are_named(model, tmp_path):
    out = tmp_path / "out"
    result = run_in_process("sample.py", f"ckpt={model}", "prompt=${oc.env:HOME} zorblax bird", "use_ema=no",
                            "num_images=1", "steps=2", f"vae_ckpt={tmp_path / 'vae.ckpt'}", f"out_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metadata = read_png_metadata(out / "0000_seed0.png")
    assert metadata["prompt"] == "${oc.env:HOME} zorblax bird" and metadata["use_ema"] is False
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("zorblax" in line and "<unknown>" in line for line in warnings), result.stderr
    assert any(line.startswith("warning: vae_ckpt=") and "denoises pixels" in line for line in warnings), result.stderr


def test_keys_without_effect_on_an_unconditional_model_are_warned(capsys):
    from diffusion.sampling import warn_ignored

    unconditional = SimpleNamespace(model=SimpleNamespace(is_text_conditional=False, num_classes=None, text=None),
                                    payload={"autoencoder": None})
    cfg = OmegaConf.create({"guidance_scale": 3.0, "guidance": {"name": "apg"}, "negative_prompt": "blurry",
                            "vae_ckpt": None})
    warn_ignored(cfg, unconditional, ["a red bird"])
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" has no effect")[0] for line in lines] == [
        "warning: guidance_scale=3.0", "warning: guidance=apg", "warning: prompt", "warning: negative_prompt='blurry'"]
    cfg.guidance_scale, cfg.guidance.name, cfg.negative_prompt = 1.0, "cfg", ""
    warn_ignored(cfg, unconditional, [""])
    assert capsys.readouterr().err == ""  # nothing set that has no effect: nothing said
