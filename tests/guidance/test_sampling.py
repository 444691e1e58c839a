"""Every guidance method samples a tiny checkpoint with a discrete sampler (ddim) and a sigma one (euler);
the default is classifier-free guidance, image for image; `sample.py guidance=apg` runs end to end and a
bad option is one line with exit status 2."""

import pytest
import torch
from omegaconf import OmegaConf

from diffusion import generate_images, load_model
from tiny import CONF, run_in_process

SPECS = {"cfg": {"name": "cfg"}, "interval": {"name": "interval", "sigma_low": 0.28, "sigma_high": 5.42},
         "apg": {"name": "apg", "eta": 0.0, "r": 15.0, "beta": -0.5}, "rescale": {"name": "rescale", "phi": 0.7}}


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_model(tiny_checkpoint)


def draw(loaded, sampler_name, guidance):
    sampler = loaded.sampler(OmegaConf.load(CONF / "sampler" / f"{sampler_name}.yaml"))
    return generate_images(loaded.model, sampler, ["a red bird", "a blue duck"], [0, 1], shape=loaded.shape, steps=3,
                           guidance_scale=4.0, guidance=guidance, decode=loaded.space.decode)


@pytest.mark.parametrize("sampler_name", ["ddim", "euler"])
def test_every_method_samples_and_the_default_is_classifier_free_guidance(loaded, sampler_name):
    default = draw(loaded, sampler_name, None)
    images = {name: draw(loaded, sampler_name, spec) for name, spec in SPECS.items()}
    assert torch.equal(images["cfg"], default)  # guidance=cfg is today's path, bit for bit
    for name, image in images.items():
        assert image.shape == default.shape and torch.isfinite(image).all(), name
        if name != "cfg":
            assert not torch.equal(image, default), name  # each method changes the images
    # the reductions to CFG: APG with eta 1, no threshold, no momentum; an interval that covers every sigma
    as_cfg = [{"name": "apg", "eta": 1.0, "r": None, "beta": 0.0}, {"name": "interval", "sigma_low": 0.0, "sigma_high": 1e9}]
    for spec in as_cfg:
        torch.testing.assert_close(draw(loaded, sampler_name, spec), default, rtol=0, atol=1e-5)


def test_sample_py_with_apg_end_to_end_and_a_bad_interval_is_one_line(tiny_checkpoint, tmp_path):
    common = [f"ckpt={tiny_checkpoint}", "prompt=a red bird", "num_images=2", "steps=2", "device=cpu"]
    result = run_in_process("sample.py", *common, "guidance=apg", "guidance.eta=0.2", "sampler=euler",
                            f"out_dir={tmp_path / 'apg'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "apg").glob("*_seed*.png"))) == 2
    bad = run_in_process("sample.py", *common, "guidance=interval", "guidance.sigma_low=5", "guidance.sigma_high=1",
                         f"out_dir={tmp_path / 'bad'}", cwd=tmp_path)
    assert bad.returncode == 2 and "sigma_low < sigma_high" in bad.stderr.splitlines()[-1], bad.stderr
    assert not list((tmp_path / "bad").glob("*.png"))
