"""Stable Diffusion 1.x opened whole, in both layouts (a diffusers folder, the original single file): our DDIM-25 with
guidance 7.5 from the same initial latents gives diffusers' StableDiffusionPipeline's final latents within 1e-4, for
text-to-image, with a negative prompt, and image-to-image at strengths 0.6 and 0.7 with the same noise (tests/pretrained/tiny_sd.py
builds the tiny random pipeline). Plus: the single file we write is the original layout as diffusers' own converters
read it, and what is missing or of another family is named in one line."""

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion import load_model
from diffusion.errors import UserError
from diffusion.pipeline import generate_images

STEPS, GUIDANCE, SEED, PROMPT = 25, 7.5, 3, "a photo of a red bird on a branch"


@pytest.fixture(scope="module")
def tiny_sd(tiny_sd_files):
    pipe, folder, single = tiny_sd_files
    loaded = {"folder": load_model(folder), "single file": load_model(single, tokenizer=folder / "tokenizer")}
    return pipe, folder, single, loaded


SHAPE = (4, 8, 8)  # the folder's native latents (sample_size 8); the single file's native size is SD's 512 px


def ours(loaded, negative_prompt="", init=None, strength=1.0) -> torch.Tensor:
    """Our final latents (generate_images decodes with `decode`: here it keeps them instead)."""
    kept = []
    generate_images(loaded.model, loaded.sampler(), [PROMPT], [SEED], shape=SHAPE, steps=STEPS,
                    guidance_scale=GUIDANCE, negative_prompt=negative_prompt, init=init, strength=strength,
                    decode=lambda x: kept.append(x) or x)
    return kept[0]


def first_noise(shape) -> torch.Tensor:
    """The draw generate_images starts image SEED from: a standard normal from its own generator."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(SEED))[None]


def test_text_to_image_and_negative_prompt_equal_diffusers(tiny_sd):
    pipe, _, _, loaded = tiny_sd
    assert loaded["folder"].shape == SHAPE and loaded["single file"].shape == (4, 256, 256)  # 512 px / 2
    shape = SHAPE
    for negative in ("", "blue water"):
        expected = pipe(PROMPT, negative_prompt=negative or None, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                        latents=first_noise(shape), output_type="latent").images
        for layout, model in loaded.items():
            difference = (ours(model, negative) - expected).abs().max().item()
            assert difference <= 1e-4, (layout, negative, difference)
    assert (ours(loaded["folder"], "blue water") - ours(loaded["folder"])).abs().max() > 1e-2  # the negative prompt acts


def test_image_to_image_at_strengths_0_6_and_0_7_equal_diffusers(tiny_sd):
    """diffusers' img2img takes 4-channel images as latents as they are; its noise is the generator's first draw.
    0.7 x 25 = 17.5: diffusers runs int() = 17 steps, this project's own models round() = 18; an SD model counts
    as diffusers does, whichever sampler draws."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe, _, _, loaded = tiny_sd
    init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    for strength in (0.6, 0.7):
        expected = img2img(PROMPT, image=init[None], strength=strength, num_inference_steps=STEPS,
                           guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(SEED),
                           output_type="latent").images
        for layout, model in loaded.items():
            difference = (ours(model, init=init, strength=strength) - expected).abs().max().item()
            assert difference <= 1e-4, (layout, strength, difference)
    sd_sampler, euler = loaded["folder"].sampler(), loaded["folder"].sampler({"_target_": "diffusion.samplers.EulerSampler"})
    assert len(sd_sampler.img2img_levels(STEPS, 0.7)) == len(euler.img2img_levels(STEPS, 0.7)) == 17
    own_rule = type(sd_sampler)(sd_sampler.objective)  # this project's samplers, built without an SD config
    assert len(own_rule.img2img_levels(STEPS, 0.7)) == 18 and len(own_rule.img2img_levels(STEPS, 0.6)) == 15


def test_single_file_is_the_original_layout_as_diffusers_reads_it(tiny_sd):
    """diffusers' own single-file converters take the file we wrote back to the folder's tensors, every one."""
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)

    pipe, _, single, _ = tiny_sd
    state = load_file(single)
    converted = {"unet": convert_ldm_unet_checkpoint(dict(state), pipe.unet.config),
                 "vae": convert_ldm_vae_checkpoint(dict(state), pipe.vae.config),
                 "text_encoder": convert_ldm_clip_checkpoint(dict(state))}
    for part, tensors in converted.items():
        expected = getattr(pipe, part).state_dict()
        tensors = {key.removeprefix("text_model.") if part == "text_encoder" else key: value for key, value in tensors.items()}
        expected = {key.removeprefix("text_model."): value for key, value in expected.items() if "position_ids" not in key}
        assert set(tensors) == set(expected), (part, sorted(set(tensors) ^ set(expected))[:4])
        for key, value in expected.items():
            assert torch.equal(tensors[key].float().reshape(value.shape), value), (part, key)


def test_prompt_over_77_tokens_runs_and_names_the_dropped_words(tiny_sd):
    text = tiny_sd[3]["folder"].model.text
    prompt = "a red bird " * 25 + "on the branch with blue wings"  # 75 word tokens, then six more
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoding = text.encode([prompt, "a red bird"])
    assert encoding.states.shape[:2] == (2, 77) and encoding.mask.all()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "dropped: 'on the branch with blue wings'" in messages[0]


def test_clip_skip_takes_the_layer_before(tiny_sd):
    """clip_skip=2 (ours, as SD users count) = diffusers' clip_skip=1: hidden_states[-2] through the final LayerNorm."""
    pipe, folder, _, _ = tiny_sd
    model = load_model(folder, clip_skip=2).model
    ids = pipe.tokenizer([PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    norm = next(module for name, module in pipe.text_encoder.named_modules() if name.endswith("final_layer_norm"))
    with torch.no_grad():
        expected = norm(pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2])
        last = pipe.text_encoder(ids).last_hidden_state
    context = model.encode([PROMPT]).context
    assert (context - expected).abs().max() <= 1e-5 and (context - last).abs().max() > 1e-2


def test_missing_parts_and_other_families_are_named(tiny_sd, tmp_path):
    pipe, folder, single, _ = tiny_sd
    state = load_file(single)
    cases = {
        "unet_only.safetensors": ({k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}, "text_encoder="),
        "no_vae.safetensors": ({k: v for k, v in state.items() if not k.startswith("first_stage_model.")}, "vae_ckpt="),
        "sdxl.safetensors": ({**state, "conditioner.embedders.0.x": torch.zeros(1)}, "is a SDXL checkpoint"),
        "sd2.safetensors": ({"cond_stage_model.model.x": torch.zeros(1), **state}, "Stable Diffusion 2.x"),
        "flux.safetensors": ({"double_blocks.0.img_attn.qkv.weight": torch.zeros(1)}, "is a Flux checkpoint"),
    }
    for name, (tensors, words) in cases.items():
        save_file(tensors, str(tmp_path / name))
        with pytest.raises(UserError, match=words.replace(".", r"\.")):
            load_model(tmp_path / name, tokenizer=folder / "tokenizer")
    with pytest.raises(UserError, match=r"no CLIP tokenizer found .*tokenizer=.*clip"):
        load_model(single)
    with pytest.raises(UserError, match="text_encoder not found"):
        load_model(single, tokenizer=folder / "tokenizer", text_encoder=tmp_path / "nowhere")
    # a text model given separately: the UNet-only file runs with the folder's text_encoder/ and vae/
    loaded = load_model(tmp_path / "unet_only.safetensors", tokenizer=folder / "tokenizer",
                        text_encoder=folder / "text_encoder", vae_ckpt=folder / "vae")
    assert (ours(loaded) - ours(tiny_sd[3]["folder"])).abs().max() <= 1e-4
