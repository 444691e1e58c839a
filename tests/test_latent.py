"""Latent diffusion end to end on tiny configs: train the autoencoder (task=vae) -> diffusion on its cached
latents (cache written once, reused) -> sample.py decodes to images; the wrong autoencoder is refused."""

import json
import shutil

import pytest
import torch
from PIL import Image

from diffusion.spaces import latents as latent_space
from diffusion.errors import UserError
from diffusion.sampling import generate
from diffusion import checkpoint as ckpt
from diffusion.training import train
from tiny import CONF, run_script, tiny_train_cfg

TINY_VAE = ["task=vae", "vae=kl_f4", "vae.base_channels=8", "vae.latent_channels=4", "vae.val_images=4",
            "vae.loss.critic.base_channels=8", "vae.loss.critic_start_step=2", "trainer.sample_every=3"]


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    run = tmp_path_factory.mktemp("vae")
    return train(tiny_train_cfg(run, *TINY_VAE, "trainer.max_steps=4"))


@pytest.fixture(scope="module")
def latent_run(autoencoder, tmp_path_factory):
    """A tiny diffusion model on the latents of `autoencoder` (a copy, so tests may move or damage it)."""
    root = tmp_path_factory.mktemp("ldm")
    vae_file = root / "vae.ckpt"
    shutil.copy(autoencoder, vae_file)
    overrides = ["vae=kl_f4", f"vae.ckpt={vae_file}", "vae.cache_images=24", f"vae.cache_dir={root / 'cache'}"]
    first = train(tiny_train_cfg(root / "first", *overrides))
    return {"root": root, "vae": vae_file, "overrides": overrides, "first": first}


def test_autoencoder_run_has_checkpoint_grids_psnr_and_scale_factor(autoencoder):
    run = autoencoder.parent.parent
    payload = ckpt.load_checkpoint(autoencoder, kind="vae")
    assert payload["step"] == 4 and payload["format_version"] == ckpt.FORMAT_VERSION
    assert 0 < payload["scale_factor"] < 1e3 and "_target_: models.vae.AutoencoderKL" in payload["config"]
    assert payload["data"]["resolution"] == 16 and payload["data"]["latent_shape"] == [4, 4, 4]
    assert payload["critic"] is not None and payload["ema"] is None
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_0000003.png", "step_0000004.png"]
    assert Image.open(run / "samples" / "step_0000004.png").size[1] > 2 * 16  # originals above reconstructions
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_psnr" in r] == [3, 4]
    losses = [r for r in records if "loss" in r]
    assert "g_loss" not in losses[0] and "g_loss" in losses[-1] and "critic_loss" in losses[-1]  # critic from step 2


@pytest.mark.parametrize("overrides", [["experiment=ldm_toybirds"], ["experiment=ldm_toybirds", "task=vae"],
                                       ["vae=kl_f8", "task=vae"]])
def test_configs_compose_and_build(tmp_path, overrides):
    from diffusion.spaces.autoencoder import build_autoencoder
    from diffusion.config import build

    cfg = tiny_train_cfg(tmp_path, *overrides)
    autoencoder = build_autoencoder(cfg.vae)
    assert autoencoder.downsampling == (8 if "vae=kl_f8" in overrides else 4) and cfg.vae.ckpt is None
    assert type(build(cfg.vae.loss.critic, in_channels=3)).__name__ == "PatchCritic"
    if "experiment=ldm_toybirds" in overrides:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            full = compose(config_name="train", overrides=["experiment=ldm_toybirds"])
        assert full.dataset.resolution == 64 and full.vae._target_ == "models.vae.AutoencoderKL"


def test_vae_none_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match=r"^task=vae .* pick vae=kl_f4 \(or vae=kl_f8\)$"):
        train(tiny_train_cfg(tmp_path, "task=vae"))


def test_fit_schedule_to_time_is_refused_for_the_autoencoder(tmp_path):
    with pytest.raises(UserError, match=r"fit_schedule_to_time is for the diffusion model"):
        train(tiny_train_cfg(tmp_path, *TINY_VAE, "trainer.max_minutes=1", "trainer.fit_schedule_to_time=true"))


def test_latent_diffusion_without_a_trained_autoencoder_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match=r"needs a trained autoencoder.*vae.ckpt="):
        train(tiny_train_cfg(tmp_path, "vae=kl_f4"))


def test_autoencoder_resume_gives_the_same_weights(tmp_path):
    straight = train(tiny_train_cfg(tmp_path / "straight", *TINY_VAE, "trainer.max_steps=4", "trainer.sample_every=0"))
    half = train(tiny_train_cfg(tmp_path / "half", *TINY_VAE, "trainer.max_steps=2", "trainer.sample_every=0"))
    resumed = train(tiny_train_cfg(tmp_path / "resumed", *TINY_VAE, "trainer.max_steps=4", "trainer.sample_every=0",
                                   f"resume={half}"))
    a, b = ckpt.load_checkpoint(straight), ckpt.load_checkpoint(resumed)
    for key in ("model", "critic"):
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], atol=1e-6, rtol=0, msg=f"{key}.{name}")


def test_latent_diffusion_caches_latents_once_and_samples_images(latent_run, tmp_path, monkeypatch):
    root = latent_run["root"]
    cache_files = list((root / "cache").glob("latents-*.pt"))
    assert len(cache_files) == 1
    cached = torch.load(cache_files[0], weights_only=True)
    assert cached["mean"].shape == cached["std"].shape == (24, 4, 4, 4)
    payload = ckpt.load_checkpoint(latent_run["first"], kind="diffusion")
    assert payload["data"]["shape"] == [4, 4, 4] and payload["data"]["resolution"] == 16
    reference = payload["autoencoder"]
    assert reference["path"] == str(latent_run["vae"]) and reference["fingerprint"].startswith("sha256:")
    assert reference["scale_factor"] == ckpt.load_checkpoint(latent_run["vae"])["scale_factor"]

    def must_not_encode(*args, **kwargs):
        raise AssertionError("the second run should load the cached latents")

    monkeypatch.setattr(latent_space, "encode_dataset", must_not_encode)
    second = train(tiny_train_cfg(root / "second", *latent_run["overrides"], "trainer.max_steps=2"))
    assert list((root / "cache").glob("latents-*.pt")) == cache_files

    # text-to-image and image-to-image (encode -> noise -> denoise -> decode) give images at image resolution
    init = tmp_path / "init.png"
    Image.new("RGB", (24, 20), (30, 90, 200)).save(init)
    for name, extra in (("t2i", {}), ("i2i", {"init_image": str(init), "strength": 0.5})):
        cfg = sample_cfg(second, tmp_path / name, **extra)
        names = generate(cfg)
        assert len(names) == 2 and all(Image.open(p).size == (16, 16) for p in names)


def test_latent_sampling_never_clamps_latents_to_the_pixel_range(latent_run):
    """conf/sampler clamps pred_x0 to [-1, 1], right for pixels; scaled latents have unit std and no range, so a
    latent model's sampler (from its checkpoint, or for the training grids) must not clamp: a DDIM step that
    starts from latents of std 3 keeps values beyond 1."""
    from diffusion.loading import load_model

    loaded = load_model(latent_run["first"])
    sampler = loaded.sampler()
    assert loaded.space.bounded is False and sampler.clip_sample is False
    x_t = 3 * torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    t = int(sampler.levels(10)[-1])  # the last step: pred_x0 is x_t itself, nearly
    step = sampler.step(lambda x, level: torch.zeros_like(x), x_t, t, -1, {})
    assert step.pred_x0.abs().max() > 2
    pixel = tiny_train_cfg(latent_run["root"] / "pixel")  # the same sampler config in pixel space clamps
    from diffusion.config import build_sampler, objective_for

    assert build_sampler(pixel.sampler, objective_for(pixel)).clip_sample is True


def test_sampling_refuses_the_wrong_autoencoder(latent_run, tmp_path):
    original = tmp_path / "right.ckpt"
    shutil.copy(latent_run["vae"], original)
    payload = ckpt.load_checkpoint(original)
    payload["model"] = {name: value + 0.01 for name, value in payload["model"].items()}
    wrong = tmp_path / "wrong.ckpt"
    ckpt.save_checkpoint(payload, wrong)

    result = run_script("sample.py", f"ckpt={latent_run['first']}", "prompt=a red bird", "num_images=1", "steps=2",
                        f"vae_ckpt={wrong}", f"out_dir={tmp_path / 'never'}", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: this latent-diffusion checkpoint was trained with autoencoder")
    assert "holds other weights" in lines[0] and "vae_ckpt=" in lines[0]
    assert not (tmp_path / "never").exists()

    with pytest.raises(UserError, match="does not exist; pass vae_ckpt="):
        generate(sample_cfg(latent_run["first"], tmp_path / "missing", vae_ckpt=str(tmp_path / "moved.ckpt")))
    # a moved autoencoder is found with vae_ckpt= and accepted: its fingerprint matches
    assert len(generate(sample_cfg(latent_run["first"], tmp_path / "moved", vae_ckpt=str(original)))) == 2


def sample_cfg(checkpoint, out_dir, **values):
    from hydra import compose, initialize_config_dir

    overrides = [f"ckpt={checkpoint}", "prompt=a red bird", "num_images=2", "steps=2", "device=cpu", f"out_dir={out_dir}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=overrides)
    for key, value in values.items():
        cfg[key] = value
    return cfg


def test_sigterm_stops_autoencoder_training_with_a_checkpoint(tmp_path):
    import signal

    from tiny import signal_after_first_log

    returncode, err = signal_after_first_log(tmp_path, signal.SIGTERM, *TINY_VAE, "trainer.sample_every=0")
    assert returncode == 0, err
    assert "stopping at step" in err
    payload = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.ckpt", kind="vae")
    assert 2 <= payload["step"] < 100000 and payload["scale_factor"] > 0
