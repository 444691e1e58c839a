"""`load_model` and `sample.py ckpt=` open the published formats — a diffusers pipeline folder (DDPM CIFAR-10's
layout), facebookresearch/DiT's `.pt` with SD's autoencoder as `vae_ckpt` — with random weights saved by the
reference library itself; our DDIM-50 from diffusers' initial noise draws diffusers' `DDIMPipeline` image; bad
inputs get one line."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DiTTransformer2DModel, UNet2DModel
from PIL import Image

from diffusion import load_model
from diffusion.data.images import read_png_metadata
from diffusion.errors import UserError
from diffusion.pretrained import diffusers_dit, dit_original
from diffusion.samplers import sample_loop
from models.dit import sincos_2d
from published import DDPM_CIFAR10, DIT_XL_2_256, SD_VAE, randomise
from tiny import run_in_process

# DDPM CIFAR-10's blocks, narrowed: 32-64-64-64 wide, one block per level, attention at 16x16
NARROW_UNET = {**DDPM_CIFAR10, "block_out_channels": [32, 64, 64, 64], "layers_per_block": 1}
# DiT-S/2's width (6 heads of 64, a published width the original file's loader recognises), 1 block, 4x4 latents
SMALL_DIT = {**DIT_XL_2_256, "num_attention_heads": 6, "attention_head_dim": 64, "num_layers": 1, "sample_size": 4}
NARROW_VAE = {**SD_VAE, "block_out_channels": [32, 64, 64], "layers_per_block": 1,
              "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3}


@pytest.fixture(scope="module")
def ddpm_pipeline(tmp_path_factory):
    """A DDPM CIFAR-10-layout pipeline folder, written by diffusers' DDPMPipeline.save_pretrained."""
    folder = tmp_path_factory.mktemp("ddpm") / "ddpm-cifar10-32"
    torch.manual_seed(0)
    unet = randomise(UNet2DModel.from_config(NARROW_UNET))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")).save_pretrained(folder)
    return folder, unet


def test_a_diffusers_pipeline_folder_opens_as_the_hand_written_unet(ddpm_pipeline):
    folder, reference = ddpm_pipeline
    loaded = load_model(folder)
    assert type(loaded.network).__name__ == "UNet" and loaded.shape == (3, 32, 32)
    assert loaded.objective.prediction_type == "epsilon" and loaded.objective.schedule.name == "linear"
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 900])
    with torch.no_grad():
        assert (loaded.network(x, t, None) - reference(x, t).sample).abs().max() <= 1e-4
    assert (load_model(folder / "unet").network.state_dict().keys() == loaded.network.state_dict().keys())


def test_ddim_50_from_diffusers_noise_draws_the_ddim_pipeline_image(ddpm_pipeline):
    """The whole pipeline: DDIMPipeline with the same weights and initial noise (eta 0, 50 steps) gives the same
    image as our DDIM sampler and loop (<= 1e-4 in [0, 1]). Both clip pred_x0 to [-1, 1]; ours then takes the
    noise that the clipped x0 implies, which is diffusers' use_clipped_model_output=True."""
    folder, reference = ddpm_pipeline
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    expected = DDIMPipeline(unet=reference, scheduler=scheduler)(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=50, eta=0.0, output_type="np",
        use_clipped_model_output=True).images
    loaded = load_model(folder)
    sampler = loaded.sampler()
    noise = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(0))  # diffusers' randn_tensor on the CPU
    x = sample_loop(sampler, lambda x_t, t: loaded.network(x_t, torch.as_tensor(t), None), noise, sampler.levels(50))
    ours = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - expected).max() <= 1e-4


def test_sample_py_draws_from_a_pipeline_folder_and_names_it_in_the_png(ddpm_pipeline, tmp_path):
    folder, _ = ddpm_pipeline
    result = run_in_process("sample.py", f"ckpt={folder}", "num_images=2", "sampler=ddim", "steps=3",
                            f"out_dir={tmp_path / 'out'}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metadata = read_png_metadata(tmp_path / "out" / "0001_seed1.png")
    assert metadata["source"]["format"] == "diffusers UNet2DModel" and metadata["sampler"] == "ddim"
    assert Image.open(tmp_path / "out" / "0001_seed1.png").size == (32, 32)


@pytest.fixture(scope="module")
def dit_files(tmp_path_factory):
    """facebookresearch/DiT's single-file layout (written from diffusers-saved weights) and an SD-layout autoencoder
    folder saved by diffusers' AutoencoderKL."""
    root = tmp_path_factory.mktemp("dit")
    torch.manual_seed(0)
    dit = randomise(DiTTransformer2DModel.from_config(SMALL_DIT))
    original = dit_original.from_ours(diffusers_dit.to_ours(dit.state_dict()))
    grid = SMALL_DIT["sample_size"] // SMALL_DIT["patch_size"]
    original["pos_embed"] = sincos_2d(grid, grid, 384, columns_first=True)[None]
    torch.save(original, root / "DiT-S-2.pt")
    randomise(AutoencoderKL.from_config(NARROW_VAE)).save_pretrained(root / "sd-vae")
    return root


def test_dit_samples_a_class_by_name_with_the_sd_autoencoder(dit_files, tmp_path):
    """DiT's own sampling (DDPM, learned variance, guidance on the prediction half) from the command line: the
    class named in the prompt, decoded by the published autoencoder (4x4 latents -> 16x16 images)."""
    result = run_in_process("sample.py", f"ckpt={dit_files / 'DiT-S-2.pt'}", f"vae_ckpt={dit_files / 'sd-vae'}",
                            "prompt=golden retriever", "guidance_scale=4", "steps=4", "num_images=2",
                            f"out_dir={tmp_path / 'out'}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metadata = read_png_metadata(tmp_path / "out" / "0000_seed0.png")
    assert metadata["class_label"] == 207 and metadata["sampler"] == "ddpm"
    assert metadata["source"]["format"] == "facebookresearch/DiT"
    assert Image.open(tmp_path / "out" / "0000_seed0.png").size == (16, 16)
    loaded = load_model(dit_files / "DiT-S-2.pt", vae_ckpt=dit_files / "sd-vae")
    assert loaded.sampler().variance_type == "learned_range" and loaded.objective.learned_variance


@pytest.mark.parametrize("make,fragment", [
    (lambda root: root.mkdir(), "is neither a diffusers model folder"),
    (lambda root: torch.save({"conv.weight": torch.zeros(2)}, root), "its keys fit none of the known formats"),
    (lambda root: root.write_bytes(b"not a weights file"), "refusing to load|cannot read"),
])
def test_a_file_of_no_known_format_is_one_line(tmp_path, make, fragment):
    target = tmp_path / "weights.pt"
    make(target)
    with pytest.raises(UserError, match=fragment):
        load_model(target)


def test_dit_without_an_autoencoder_or_with_an_unknown_class_is_one_line(dit_files, tmp_path):
    with pytest.raises(UserError, match="pass vae_ckpt="):
        load_model(dit_files / "DiT-S-2.pt")
    result = run_in_process("sample.py", f"ckpt={dit_files / 'DiT-S-2.pt'}", f"vae_ckpt={dit_files / 'sd-vae'}",
                            "prompt=goldn retrever", "steps=2", f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 2 and "nearest: 'golden retriever'" in result.stderr.splitlines()[-1]
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(UserError, match="is an autoencoder, not a denoiser"):
        load_model(tmp_path / "folder")


# ---------------------------------------------------------------------------------------------- the papers' FID commands


def fid_command():
    """experiments/published/fid.py's main (a script, not a package module)."""
    import importlib.util

    from tiny import ROOT

    spec = importlib.util.spec_from_file_location("published_fid", ROOT / "experiments" / "published" / "fid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_the_ddim_cifar10_fid_command_runs_at_toy_size(ddpm_pipeline, tmp_path, monkeypatch):
    """experiments/published/fid.py ddim-cifar10 on a narrowed random pipeline and a miniature CIFAR-10: the
    real Inception FID against statistics of the (miniature) training set, one row per step count."""
    import torchvision

    from fixtures import make_cifar10
    main = fid_command()
    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path / "cache"))  # reference statistics stay in the test's folder

    source = torchvision.datasets.CIFAR10  # the miniature cannot match the published MD5s
    monkeypatch.setattr(source, "train_list", [[name, None] for name, _ in source.train_list])
    monkeypatch.setattr(source, "test_list", [[name, None] for name, _ in source.test_list])
    monkeypatch.setattr(source, "meta", {**source.meta, "md5": None})
    make_cifar10(tmp_path / "cifar10")
    folder, _ = ddpm_pipeline
    results = main(["ddim-cifar10", "--ckpt", str(folder), "--data", str(tmp_path / "cifar10"), "--steps", "2", "3",
                    "--num", "4", "--reference-num", "4", "--batch-size", "4", "--device", "cpu",
                    "--out", str(tmp_path / "out")])
    assert [row["steps"] for row in results["fids"]] == [2, 3] and all(row["fid"] > 0 for row in results["fids"])
    assert json.loads((tmp_path / "out" / "results.json").read_text())["row"] == "ddim-cifar10"
    with pytest.raises(UserError, match="already exists"):
        main(["ddim-cifar10", "--ckpt", str(folder), "--data", str(tmp_path / "cifar10"), "--out", str(tmp_path / "out")])


def test_the_dit_fid_command_runs_at_toy_size(dit_files, tmp_path, monkeypatch):
    from fixtures import make_image_folder
    main = fid_command()
    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path / "cache"))

    make_image_folder(tmp_path / "imagenet")
    results = main(["dit", "--ckpt", str(dit_files / "DiT-S-2.pt"), "--vae", str(dit_files / "sd-vae"),
                    "--reference", str(tmp_path / "imagenet"), "--steps", "3", "--num", "4", "--reference-num", "4",
                    "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert results["fids"][0]["sampler"] == "ddpm" and results["fids"][0]["fid"] > 0
