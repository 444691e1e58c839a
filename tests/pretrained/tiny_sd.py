"""A tiny random Stable Diffusion 1.x pipeline, in both layouts users download, for the whole-pipeline tests.

The structure is SD 1.5's, narrowed: a UNet2DConditionModel with transformers (8 heads) at every level but the lowest
and in the middle, cross-attending to a CLIPTextModel's 77 token states; the kl autoencoder; DDIMScheduler with SD's
scheduler config (scaled-linear betas, steps_offset 1, set_alpha_to_one false). The tokenizer's vocabulary is CLIP's
byte alphabet plus a few dozen merges, written as vocab.json + merges.txt, which transformers' CLIPTokenizer reads.

    folder/            save_pretrained: model_index.json, unet/ vae/ text_encoder/ tokenizer/ scheduler/
    single.safetensors the same weights in the original layout (model.diffusion_model.*, first_stage_model.*,
                       cond_stage_model.transformer.text_model.*), in float16 (the weights are float16-exact, so
                       the half-precision file holds the folder's weights exactly)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from published import randomise

WORDS = ["a", "photo", "of", "red", "blue", "bird", "on", "branch", "the", "small", "duck", "water", "with", "wings"]
TEXT = {"vocab_size": None, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 1, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64), "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 64, "attention_head_dim": 8, "norm_num_groups": 32}
VAE = {"block_out_channels": (32, 32), "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 32,
       "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2, "sample_size": 16}
SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
             "set_alpha_to_one": False, "steps_offset": 1}


def write_vocabulary(folder: Path) -> Path:
    """vocab.json + merges.txt: CLIP's 512 byte symbols (alone and word-final), merges that spell WORDS, the specials."""
    from models.clip_tokenizer import bytes_to_unicode, vocabulary_from_merges

    merges = []
    for word in WORDS:  # left to right: "bird</w>" <- "b"+"i", "bi"+"r", "bir"+"d</w>"
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            if pair not in merges:
                merges.append(pair)
            symbols = ["".join(pair), *symbols[2:]]
    assert all(len(c) == 1 for c in bytes_to_unicode().values())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocabulary_from_merges(merges)))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n")
    return folder


def half_exact(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    return model


def tiny_pipeline(root: Path):
    """(the diffusers StableDiffusionPipeline, its folder, the single file)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocabulary = write_vocabulary(root / "vocabulary")
    tokenizer = CLIPTokenizer(str(vocabulary / "vocab.json"), str(vocabulary / "merges.txt"), model_max_length=77,
                              pad_token="<|endoftext|>")
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(**{**TEXT, "vocab_size": len(tokenizer), "eos_token_id": end,
                                           "bos_token_id": end - 1, "pad_token_id": end}))
    unet, vae = UNet2DConditionModel(**UNET), AutoencoderKL(**VAE)
    for seed, model in enumerate((text, unet, vae)):
        half_exact(randomise(model, seed))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    folder = root / "tiny-sd"
    pipe.save_pretrained(folder, safe_serialization=True)
    single = root / "tiny-sd.safetensors"
    write_single_file(pipe, single)
    return pipe, folder, single


def write_single_file(pipe, path: Path, parts=("unet", "vae", "text")) -> None:
    """The pipeline's weights in the original single-file layout (through our tables both ways), float16."""
    from safetensors.torch import save_file

    from diffusion.pretrained import diffusers_sd_unet, diffusers_vae, ldm_unet, ldm_vae, transformers_clip

    state = {}
    if "unet" in parts:
        config = pipe.unet.config
        attention_levels = [i for i, kind in enumerate(config.down_block_types) if kind.startswith("CrossAttn")]
        state.update(ldm_unet.from_ours(diffusers_sd_unet.to_ours(pipe.unet.state_dict()), list(config.block_out_channels),
                                        config.layers_per_block, attention_levels))
    if "vae" in parts:
        config = pipe.vae.config
        state.update(ldm_vae.from_ours(diffusers_vae.to_ours(pipe.vae.state_dict()), len(config.block_out_channels),
                                       config.layers_per_block, prefix=ldm_vae.PREFIX))
    if "text" in parts:
        published = transformers_clip.from_ours(transformers_clip.to_ours(pipe.text_encoder.state_dict()))
        state.update({"cond_stage_model.transformer." + key: tensor for key, tensor in published.items()})
    save_file({key: tensor.half().contiguous() for key, tensor in state.items()}, str(path))
