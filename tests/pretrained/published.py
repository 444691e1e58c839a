"""The published configs (as their config.json files read) and the steps every parity test shares: random weights
saved by diffusers itself, read back with the safetensors package, and our network built from its `_target_` kwargs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from diffusion.config import build
from diffusion.pretrained.diffusers_sd_unet import SD15_CONFIG

# google/ddpm-cifar10-32 config.json (Ho et al. 2020's CIFAR-10 network, converted by diffusers)
DDPM_CIFAR10 = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}

# facebook/DiT-XL-2-256 transformer/config.json (the hub's file names the legacy Transformer2DModel class)
DIT_XL_2_256 = {
    "_class_name": "Transformer2DModel", "activation_fn": "gelu-approximate", "attention_bias": True,
    "attention_head_dim": 72, "cross_attention_dim": None, "dropout": 0.0, "in_channels": 4,
    "norm_elementwise_affine": False, "norm_num_groups": 32, "norm_type": "ada_norm_zero", "num_attention_heads": 16,
    "num_embeds_ada_norm": 1000, "num_layers": 28, "num_vector_embeds": None, "only_cross_attention": False,
    "out_channels": 8, "patch_size": 2, "sample_size": 32, "upcast_attention": False, "use_linear_projection": False,
}

# stabilityai/sd-vae-ft-mse config.json (Stable Diffusion's kl-f8 autoencoder; scaling_factor: diffusers' default)
SD_VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 256, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter, norms and zero-initialised layers included, so a tensor in the wrong place shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def saved_and_read(model, folder: Path) -> tuple[dict, dict]:
    """`save_pretrained` (safetensors) into `folder`, then (config.json, the weights through the safetensors package)."""
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    return config, load_file(folder / "diffusion_pytorch_model.safetensors")


def ours(kwargs: dict, state_dict: dict) -> torch.nn.Module:
    """Our network, built from `_target_` kwargs as diffusion/ builds networks, loaded strictly."""
    network = build(OmegaConf.create(kwargs), where="pretrained")
    network.load_state_dict(state_dict, strict=True)
    return network.eval()


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()

SD15_UNET = SD15_CONFIG  # runwayml/stable-diffusion-v1-5 unet/config.json (diffusion/pretrained/diffusers_sd_unet.py)
