"""`python -m diffusion.export`: a checkpoint as safetensors weights with its config in the metadata, read back by
`load_model` (and so by sample.py) to the same network, bit for bit; nothing overwritten, bad arguments one line."""

import torch
from safetensors import safe_open

from diffusion import generate_images, load_model
from diffusion.checkpoint import load_checkpoint
from diffusion.model import legacy_keys
from tiny import run_in_process


def test_the_export_round_trips_bit_for_bit_and_samples_the_same_images(tiny_checkpoint, tmp_path):
    out = tmp_path / "birds.safetensors"
    result = run_in_process("diffusion.export", f"ckpt={tiny_checkpoint}", f"out={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with safe_open(str(out), "pt") as file:  # plain tensors and string metadata: readable by any safetensors reader
        assert file.metadata()["format"] == "diffusion-from-scratch" and "denoiser" in " ".join(file.keys())
    stored = legacy_keys(load_checkpoint(tiny_checkpoint)["ema"])
    exported, original = load_model(out), load_model(tiny_checkpoint)
    state = exported.model.state_dict()
    assert state.keys() == stored.keys() and all(torch.equal(state[k], stored[k]) for k in stored)
    draw = [generate_images(m.model, m.sampler(), ["a red bird"], [3], shape=m.shape, steps=3, decode=m.space.decode)
            for m in (original, exported)]
    assert torch.equal(draw[0], draw[1])


def test_the_export_refuses_to_overwrite_and_names_bad_arguments(tiny_checkpoint, tmp_path):
    out = tmp_path / "kept.safetensors"
    out.write_bytes(b"a file the user keeps")
    cases = [([f"ckpt={tiny_checkpoint}", f"out={out}"], "already exists"),
             ([f"ckpt={tiny_checkpoint}", f"out={tmp_path / 'x.pt'}"], "is a .safetensors file"),
             ([f"ckpt={tiny_checkpoint}", f"out={tmp_path / 'y.safetensors'}", "use_ema=maybe"], "use true or false"),
             ([f"ckpt={tiny_checkpoint}", "colour=red"], "unknown argument 'colour=red'"),
             ([f"out={tmp_path / 'z.safetensors'}"], "give ckpt=")]
    for args, fragment in cases:
        result = run_in_process("diffusion.export", *args, cwd=tmp_path)
        assert result.returncode == 2 and fragment in result.stderr.splitlines()[-1], (args, result.stderr)
    assert out.read_bytes() == b"a file the user keeps"
    overwritten = run_in_process("diffusion.export", f"ckpt={tiny_checkpoint}", f"out={out}", "overwrite=true", cwd=tmp_path)
    assert overwritten.returncode == 0 and load_model(out).network is not None
