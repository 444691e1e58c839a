"""`sample.py` on Stable Diffusion 1.x, run in-process on the tiny random pipeline in both layouts: text-to-image at
the native size and at height= / width=, samplers beside the checkpoint's own DDIM, negative prompts, bf16,
image-to-image and inpainting (at height != width too); the cost line and the PNG metadata; a prompt over 77 tokens warned in one line; sizes
that are not a multiple of the model's, and SD-only keys on other checkpoints, refused in one line; per-word
cross-attention maps from the inspection tools."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion import load_model
from diffusion.data.images import read_png_metadata
from tiny import run_in_process


@pytest.fixture(scope="module")
def layouts(tiny_sd_files):
    """`sample.py` arguments that open each layout (the single file needs CLIP's vocabulary given: it holds none)."""
    _, folder, single = tiny_sd_files
    return {"folder": [f"ckpt={folder}"], "single file": [f"ckpt={single}", f"tokenizer={folder / 'tokenizer'}"]}


def sample(tmp_path, name, *args):
    result = run_in_process("sample.py", *args, "num_images=1", "steps=3", "device=cpu", f"out_dir={tmp_path / name}",
                            cwd=tmp_path)
    return result, tmp_path / name


def test_text_to_image_in_both_layouts_with_the_cost_line_and_metadata(layouts, tmp_path):
    for layout, args in layouts.items():
        size = [] if layout == "folder" else ["height=24", "width=16"]  # the single file's native 512 px is slow here
        result, out = sample(tmp_path, layout.replace(" ", "_"), *args, "prompt=a photo of a red bird",
                             "negative_prompt=blue water", "guidance_scale=7.5", *size)
        assert result.returncode == 0, result.stderr
        assert "cost per image:" in result.stdout and "(3 network calls)" in result.stdout
        image = Image.open(out / "0000_seed0.png")
        assert image.size == ((16, 16) if layout == "folder" else (16, 24))
        meta = read_png_metadata(out / "0000_seed0.png")
        assert meta["negative_prompt"] == "blue water" and meta["sampler"] == "ddim"
        assert "steps_offset=1" in meta["sampler_config"] and "set_alpha_to_one=False" in meta["sampler_config"]
        assert meta["source"]["format"] in ("diffusers StableDiffusionPipeline", "Stable Diffusion 1.x single file")


def test_other_samplers_bf16_img2img_and_inpainting(layouts, tmp_path):
    args = layouts["folder"]
    for sampler in ("euler", "dpmpp_2m", "ddpm"):
        result, _ = sample(tmp_path, sampler, *args, "prompt=a red bird", f"sampler={sampler}")
        assert result.returncode == 0, (sampler, result.stderr)
    result, out = sample(tmp_path, "bf16", *args, "prompt=a red bird", "dtype=bf16")
    assert result.returncode == 0, result.stderr
    assert read_png_metadata(out / "0000_seed0.png")["dtype"] == "bf16"

    picture, mask = np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.uint8)
    picture[4:12, 4:12] = (200, 30, 30)
    mask[:, 8:] = 255
    Image.fromarray(picture).save(tmp_path / "init.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result, out = sample(tmp_path, "img2img", *args, "prompt=a red bird", f"init_image={tmp_path / 'init.png'}",
                         "strength=0.6")
    assert result.returncode == 0, result.stderr
    assert read_png_metadata(out / "0000_seed0.png")["strength"] == 0.6
    result, out = sample(tmp_path, "inpaint", *args, "prompt=a red bird", f"init_image={tmp_path / 'init.png'}",
                         f"mask={tmp_path / 'mask.png'}")
    assert result.returncode == 0, result.stderr


def test_img2img_and_inpainting_at_height_by_width(layouts, tmp_path):
    """init_image= and mask= at height != width: both cropped to the requested shape's centred box and resized."""
    picture, mask = np.zeros((20, 40, 3), np.uint8), np.zeros((20, 40), np.uint8)  # wide pictures for a tall image
    picture[:, 15:25] = (200, 30, 30)
    mask[10:] = 255
    Image.fromarray(picture).save(tmp_path / "wide.png")
    Image.fromarray(mask).save(tmp_path / "wide_mask.png")
    result, out = sample(tmp_path, "inpaint", *layouts["folder"], "prompt=a red bird", "height=24", "width=16",
                         f"init_image={tmp_path / 'wide.png'}", f"mask={tmp_path / 'wide_mask.png'}", "strength=0.7")
    assert result.returncode == 0, result.stderr
    assert Image.open(out / "0000_seed0.png").size == (16, 24)
    meta = read_png_metadata(out / "0000_seed0.png")
    assert (meta["height"], meta["width"], meta["strength"]) == (24, 16, 0.7)


def test_long_prompts_warn_and_bad_sizes_are_refused(layouts, tmp_path):
    args = layouts["folder"]
    long = "a red bird " * 25 + "on the branch with blue wings"
    result, _ = sample(tmp_path, "long", *args, f"prompt={long}")
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "dropped: 'on the branch with blue wings'" in warned[0]

    refusals = {"height=18": "height=18 is not a multiple of 4", "width=0": "width=0: use a whole number of pixels",
                "dtype=fp8": "dtype='fp8': use one of fp32, bf16, fp16", "clip_skip=0": "clip_skip=0: use an integer >= 1",
                "clip_skip=9": "clip_skip=9 must be between 1"}
    for override, words in refusals.items():
        result, out = sample(tmp_path, "refused", *args, "prompt=a red bird", override)
        assert result.returncode == 2 and words in result.stderr, (override, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_per_word_cross_attention_maps(tiny_sd_files, tmp_path):
    from diffusion.tools.inspection import cross_attention_maps, render_attention

    loaded = load_model(tiny_sd_files[1])
    x_t = torch.randn(1, *loaded.shape, generator=torch.Generator().manual_seed(0))
    maps = cross_attention_maps(loaded.model, "a red bird on a branch", x_t, t=500)
    assert maps.tokens[:7] == ["<|startoftext|>", "a", "red", "bird", "on", "a", "branch"] and len(maps.tokens) == 77
    assert maps.maps.shape == (77, 8, 8)
    assert torch.allclose(maps.maps.sum(0), torch.ones(8, 8), atol=1e-5)  # SD attends over all 77 positions
    assert render_attention(maps, tmp_path / "words.png").is_file()


def test_dtype_casts_the_weights_on_cuda_and_keeps_float32_on_the_cpu(tiny_sd_files):
    """cast_networks, the function sample.py calls: on the CPU the weights stay float32 (autocast alone); the cast a
    CUDA device gets, forced here on the CPU, puts the UNet, text encoder and autoencoder in bf16 / fp16, and
    sampling in fp16 under autocast still draws the float32 image, to half precision's error."""
    from diffusion.pipeline import generate_images
    from diffusion.sampling import cast_networks, casts_weights

    assert casts_weights(torch.device("cuda"), torch.float16) and not casts_weights(torch.device("cuda"), torch.float32)
    assert not casts_weights(torch.device("cpu"), torch.bfloat16)

    def draw(loaded, dtype):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            return generate_images(loaded.model, loaded.sampler(), ["a red bird"], [0], shape=loaded.shape, steps=2,
                                   guidance_scale=7.5, init=torch.zeros(loaded.shape), strength=0.9,
                                   decode=loaded.space.decode).float()

    reference = load_model(tiny_sd_files[1])
    assert not cast_networks(reference, torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in reference.model.parameters()} == {torch.float32}
    for dtype in (torch.bfloat16, torch.float16):
        loaded = load_model(tiny_sd_files[1])
        assert cast_networks(loaded, torch.device("cpu"), dtype, cast=True)
        for part in (loaded.model.denoiser, loaded.model.text, loaded.space.autoencoder):
            assert {p.dtype for p in part.parameters()} == {dtype}, (dtype, type(part).__name__)
    image, expected = draw(loaded, torch.float16), draw(reference, torch.float32)  # fp16: diffusers' SD on small GPUs
    assert torch.isfinite(image).all() and (image - expected).abs().mean() < 0.01, (image - expected).abs().mean()
