"""Checkpoints written before the wiring redesign still load and draw the same images.

The two fixtures were trained (3 steps, 16 px) by the code before the redesign: their stored configs name the
objective as a string (`diffusion.objective: flow`, `diffusion.prediction_type: v`), the samplers as
`diffusion.schedulers.*`, and their weights sit under `unet.*`. The PNGs beside them are what that code's
`sample.py` drew from them (prompt "a red bird", steps=4, guidance 3, seed 1 of seeds 0 and 1); today's code must
draw them again bit for bit."""

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from diffusion import generate_images, load_model
from diffusion.data.images import to_pil
from diffusion.pipeline import load_init_image
from tiny import CONF, run_in_process

FIXTURES = __import__("pathlib").Path(__file__).resolve().parent / "fixtures"
DDPM, FLOW = FIXTURES / "legacy_ddpm_before_redesign.ckpt", FIXTURES / "legacy_flow_before_redesign.ckpt"


def drawn(loaded, sampler, **kwargs) -> np.ndarray:
    images = generate_images(loaded.model, sampler, ["a red bird"] * 2, [0, 1], shape=loaded.shape, steps=4,
                             guidance_scale=3.0, decode=loaded.space.decode, **kwargs)
    return np.asarray(to_pil(images[1]))


def expected(name: str) -> np.ndarray:
    return np.asarray(Image.open(FIXTURES / "legacy_samples" / f"{name}.png").convert("RGB"))


def test_a_legacy_config_reads_as_todays_objective_and_sampler():
    ddpm, flow = load_model(DDPM), load_model(FLOW)
    assert "objective" not in ddpm.config and ddpm.config.diffusion.objective == "ddpm"  # the stored form
    assert ddpm.objective.name == "ddpm" and ddpm.objective.prediction_type == "v"
    assert flow.objective.name == "flow" and flow.sampler().name == "flow_euler"
    assert type(ddpm.sampler()).__name__ == "DDIMSampler" and ddpm.sampler().timestep_spacing == "trailing"
    assert ddpm.network is ddpm.model.denoiser  # weights saved under unet.* land in .denoiser


@pytest.mark.parametrize("name", ["ddim", "ddpm", "euler", "heun", "dpmpp_2m"])
def test_every_sampler_draws_the_images_the_old_code_drew(name):
    loaded = load_model(DDPM)
    assert (drawn(loaded, loaded.sampler(OmegaConf.load(CONF / "sampler" / f"{name}.yaml"))) == expected(f"ddpm_{name}")).all()


def test_eta_and_image_to_image_draw_the_old_images_too():
    loaded = load_model(DDPM)
    assert (drawn(loaded, loaded.sampler(eta=0.7)) == expected("ddpm_ddim_eta")).all()
    init = loaded.space.encode(load_init_image(FIXTURES / "legacy_samples" / "init.png", 16)[None])[0]
    assert (drawn(loaded, loaded.sampler(), init=init, strength=0.5) == expected("ddpm_i2i")).all()


def test_sample_py_draws_the_old_flow_image_from_the_command_line(tmp_path):
    """The whole command: the checkpoint's own sampler (flow_euler, from `diffusion.schedulers.FlowEulerSampler`)."""
    result = run_in_process("sample.py", f"ckpt={FLOW}", "prompt=a red bird", "num_images=2", "steps=4",
                        f"out_dir={tmp_path / 'out'}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (np.asarray(Image.open(tmp_path / "out" / "0001_seed1.png").convert("RGB")) == expected("flow_flow_euler")).all()
