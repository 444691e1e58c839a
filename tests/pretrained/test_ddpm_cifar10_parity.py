"""The hand-written UNet is DDPM CIFAR-10 (google/ddpm-cifar10-32): random weights at the published config, saved by
diffusers' UNet2DModel, load through diffusion/pretrained/diffusers_unet.py and give its epsilon within 1e-4."""

import pytest
import torch
from diffusers import UNet2DModel
from omegaconf import OmegaConf

from diffusion.config import build
from diffusion.errors import UserError
from diffusion.pretrained import diffusers_unet
from published import DDPM_CIFAR10, max_difference, ours, randomise, saved_and_read

# the same block types at a quarter of the width and one block a level
NARROW = {**DDPM_CIFAR10, "block_out_channels": [32, 64, 64, 64], "layers_per_block": 1}


def parity(config: dict, folder) -> float:
    torch.manual_seed(0)
    reference = randomise(UNet2DModel.from_config(config))
    published_config, weights = saved_and_read(reference, folder)
    network = ours(diffusers_unet.network_config(published_config), diffusers_unet.to_ours(weights))
    x_t = torch.randn(2, 3, 32, 32)
    t = torch.tensor([10, 999])
    with torch.no_grad():
        difference = max_difference(network(x_t, t, None), reference(x_t, t).sample)
    print(f"DDPM CIFAR-10 {config['block_out_channels']}: max |eps ours - eps diffusers| = {difference:.2e}")
    return difference


def test_narrow_ddpm_cifar10_matches_diffusers(tmp_path):
    assert parity(NARROW, tmp_path) <= 1e-4


@pytest.mark.slow
def test_full_ddpm_cifar10_matches_diffusers(tmp_path):
    assert parity(DDPM_CIFAR10, tmp_path) <= 1e-4


def test_the_published_config_is_ho_et_al_network():
    kwargs = diffusers_unet.network_config(DDPM_CIFAR10)
    assert kwargs == {"_target_": "models.unet.UNet", "in_channels": 3, "out_channels": 3, "base_channels": 128,
                      "channel_mult": [1, 2, 2, 2], "num_res_blocks": 2, "attention_levels": [1], "num_heads": 1,
                      "head_dim": None, "dropout": 0.0, "scale_shift": False, "norm_groups": 32, "emb_dim": None,
                      "time_sin_first": True, "time_frequency_shift": 1, "downsample_padding": 0}
    network = build(OmegaConf.create(kwargs))
    reference = UNet2DModel.from_config(DDPM_CIFAR10)
    count = sum(p.numel() for p in network.parameters())
    assert count == sum(p.numel() for p in reference.parameters()) and round(count / 1e6, 1) == 35.7  # Ho et al.


def test_the_tables_go_both_ways():
    weights = UNet2DModel.from_config(NARROW).state_dict()
    back = diffusers_unet.from_ours(diffusers_unet.to_ours(weights), levels=4, layers_per_block=1, attention_levels=[1])
    assert back.keys() == weights.keys() and all(torch.equal(back[key], weights[key]) for key in weights)


def test_older_attention_names_are_read_too():
    torch.manual_seed(0)
    weights = UNet2DModel.from_config(NARROW).state_dict()
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, tensor in weights.items():
        for new, old in old_names.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        renamed[key] = tensor
    assert diffusers_unet.to_ours(renamed).keys() == diffusers_unet.to_ours(weights).keys()


def test_unknown_and_missing_keys_are_named():
    weights = UNet2DModel.from_config(NARROW).state_dict()
    with pytest.raises(UserError, match="fit no known layer, first: extra.weight"):
        diffusers_unet.to_ours({**weights, "extra.weight": torch.zeros(1)})
    del weights["mid_block.attentions.0.to_k.weight"]
    with pytest.raises(UserError, match="missing, first: mid_block.attentions.0.to_k.weight"):
        diffusers_unet.to_ours(weights)


@pytest.mark.parametrize("key,value", [("resnet_time_scale_shift", "scale_shift"), ("norm_eps", 1e-5),
                                       ("down_block_types", ["CrossAttnDownBlock2D"] * 4)])
def test_a_config_the_unet_cannot_reproduce_is_refused_in_one_line(key, value):
    with pytest.raises(UserError, match=key):
        diffusers_unet.network_config({**DDPM_CIFAR10, key: value})
