"""The hand-written autoencoder is Stable Diffusion's (kl-f8): random weights at the published config, saved by
diffusers' AutoencoderKL, give its posterior mean, log-variance and decoding within 1e-4; the same weights written
as the LDM / SD single file (safetensors, and a `.ckpt` with `first_stage_model.*` beside other networks) load to
a bit-identical network, and diffusers' own single-file converter reads that file back to the weights it saved."""

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import load_file, save_file

from diffusion.errors import UserError
from diffusion.pretrained import diffusers_vae, ldm_vae
from published import SD_VAE, max_difference, ours, randomise, saved_and_read

# the same block types at a quarter of the width, three levels (the last two as wide, as in SD's 128-256-512-512)
NARROW = {**SD_VAE, "block_out_channels": [32, 64, 64], "layers_per_block": 1,
          "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3}


def published_vae(config: dict) -> AutoencoderKL:
    torch.manual_seed(0)
    return randomise(AutoencoderKL.from_config(config))


def parity(config: dict, folder, side: int) -> dict:
    reference = published_vae(config)
    published_config, weights = saved_and_read(reference, folder)
    network = ours(diffusers_vae.network_config(published_config), diffusers_vae.to_ours(weights))
    images = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected, posterior = reference.encode(images).latent_dist, network.encode(images)
        z = expected.mean
        differences = {"mean": max_difference(posterior.mean, expected.mean),
                       "logvar": max_difference(posterior.logvar, expected.logvar),
                       "decode": max_difference(network.decode(z), reference.decode(z).sample)}
    print(f"SD VAE {config['block_out_channels']} at {side}px: max |ours - diffusers| "
          + ", ".join(f"{name} {value:.2e}" for name, value in differences.items()))
    return differences


def test_narrow_sd_vae_matches_diffusers(tmp_path):
    assert max(parity(NARROW, tmp_path, side=32).values()) <= 1e-4


@pytest.mark.slow
def test_full_sd_vae_matches_diffusers(tmp_path):
    assert max(parity(SD_VAE, tmp_path, side=128).values()) <= 1e-4


def test_the_ldm_single_file_loads_to_a_bit_identical_network(tmp_path):
    published_config, weights = saved_and_read(published_vae(NARROW), tmp_path / "diffusers")
    kwargs = diffusers_vae.network_config(published_config)
    from_diffusers = ours(kwargs, diffusers_vae.to_ours(weights))
    single_file = ldm_vae.from_ours(from_diffusers.state_dict(), levels=3, layers_per_block=1)

    # diffusers' own converter reads our LDM layout back to exactly the tensors diffusers saved
    converted = convert_ldm_vae_checkpoint(single_file, published_config)
    assert converted.keys() == weights.keys()
    assert all(torch.equal(converted[key].reshape(weights[key].shape), weights[key]) for key in weights)

    save_file(single_file, tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors")
    whole_sd = {**ldm_vae.from_ours(from_diffusers.state_dict(), 3, 1, prefix=ldm_vae.PREFIX),
                "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),  # the SD UNet and text encoder beside it
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1)}
    torch.save({"state_dict": whole_sd}, tmp_path / "sd-v1-4.ckpt")
    for state_dict in (load_file(tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors"),
                       torch.load(tmp_path / "sd-v1-4.ckpt", map_location="cpu", weights_only=True)["state_dict"]):
        assert ldm_vae.network_config(state_dict) == kwargs
        from_single_file = ours(ldm_vae.network_config(state_dict), ldm_vae.to_ours(state_dict))
        expected, got = from_diffusers.state_dict(), from_single_file.state_dict()
        assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)


def test_the_published_config_is_the_sd_autoencoder():
    assert diffusers_vae.network_config(SD_VAE) == {
        "_target_": "models.vae.AutoencoderKL", "in_channels": 3, "base_channels": 128, "channel_mult": [1, 2, 4, 4],
        "num_res_blocks": 2, "latent_channels": 4, "attention": True, "dropout": 0.0, "shortcuts": False,
        "width_change": "first_block", "downsample_padding": 0, "quant_convs": True, "scale_factor": 0.18215}


def test_the_tables_go_both_ways_and_name_what_does_not_fit():
    weights = AutoencoderKL.from_config(NARROW).state_dict()
    back = diffusers_vae.from_ours(diffusers_vae.to_ours(weights), levels=3, layers_per_block=1)
    assert back.keys() == weights.keys() and all(torch.equal(back[key], weights[key]) for key in weights)
    with pytest.raises(UserError, match="fit no known layer, first: encoder.extra.weight"):
        diffusers_vae.to_ours({**weights, "encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="not an LDM / SD autoencoder"):
        ldm_vae.to_ours(weights)  # diffusers keys are not the LDM layout
    with pytest.raises(UserError, match="shift_factor"):
        diffusers_vae.network_config({**SD_VAE, "shift_factor": 0.1159})  # SD 3's autoencoder
