"""`model=ddpm_cifar10`, `model=sd15`, `model=dit_xl2_256` and `vae=sd` are the published architectures: each config file holds what
the format's `network_config` reads from the published config, less the values the data fills in."""

from pathlib import Path

from omegaconf import OmegaConf

from diffusion.pretrained import diffusers_sd_unet, diffusers_unet, diffusers_vae, dit_original
from published import DDPM_CIFAR10, SD15_UNET, SD_VAE

CONF = Path(__file__).resolve().parents[2] / "conf"
FILLED_BY_DATA = ("in_channels", "out_channels", "num_classes")


def config_file(path: str, leave_out=()) -> dict:
    node = OmegaConf.to_container(OmegaConf.load(CONF / path))
    return {key: value for key, value in node.items() if key not in leave_out}


def published(kwargs: dict, leave_out=()) -> dict:
    return {key: value for key, value in kwargs.items() if key not in FILLED_BY_DATA + tuple(leave_out)}


def test_ddpm_cifar10_config_is_the_published_unet():
    assert config_file("model/ddpm_cifar10.yaml", ("dropout", "gradient_checkpointing")) \
        == published(diffusers_unet.network_config(DDPM_CIFAR10), ("dropout",))


def test_sd15_config_is_the_published_unet():  # context_dim: the text encoder's width, filled in like the channels
    assert config_file("model/sd15.yaml", ("gradient_checkpointing",)) \
        == published(diffusers_sd_unet.network_config(SD15_UNET), ("context_dim",))


def test_dit_xl2_256_config_is_the_original_dit_xl_2():
    import torch

    shapes = {"x_embedder.proj.weight": (1152, 4, 2, 2), "final_layer.linear.weight": (32, 1152),
              "blocks.0.mlp.fc1.weight": (4608, 1152), "y_embedder.embedding_table.weight": (1001, 1152),
              **{f"blocks.{n}.attn.qkv.weight": (3456, 1152) for n in range(28)}}
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    assert config_file("model/dit_xl2_256.yaml") == published(dit_original.network_config(state_dict))


def test_sd_config_is_the_published_autoencoder():
    not_constructor = ("ckpt", "loss", "ema", "val_images", "cache_images", "cache_dir")  # diffusion.autoencoder's
    assert config_file("vae/sd.yaml", not_constructor) == published(diffusers_vae.network_config(SD_VAE))
