"""The hand-written UNet is Stable Diffusion 1.5's denoiser: random weights at the published config, saved by diffusers'
UNet2DConditionModel, load through diffusion/pretrained/diffusers_sd_unet.py and give its epsilon within 1e-4; the same
weights in the original single-file layout (checked against diffusers' own single-file converter) load through
ldm_unet.py into the same network."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from omegaconf import OmegaConf

from diffusion.config import build
from diffusion.errors import UserError
from diffusion.pretrained import diffusers_sd_unet, ldm_unet
from published import SD15_UNET, max_difference, ours, randomise, saved_and_read

# the same structure (4 levels, 2 blocks, transformers at 0-2, 8 heads) at a tenth of the width, 32-wide text
NARROW = {**SD15_UNET, "block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32, "sample_size": 16}
# SD 2.x's differences: linear projections around the transformers, heads of a fixed width (here 16 channels)
NARROW_SD2 = {**NARROW, "use_linear_projection": True, "attention_head_dim": [2, 4, 4, 4]}


def parity(config: dict, folder) -> float:
    torch.manual_seed(0)
    reference = randomise(UNet2DConditionModel.from_config(config))
    published_config, weights = saved_and_read(reference, folder)
    network = ours(diffusers_sd_unet.network_config(published_config), diffusers_sd_unet.to_ours(weights))
    side, width = config["sample_size"], config["cross_attention_dim"]
    generator = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 4, side, side, generator=generator)
    t = torch.tensor([10, 999])
    context = torch.randn(2, 77, width, generator=generator)  # (B, tokens, text width)
    with torch.no_grad():
        difference = max_difference(network(x_t, t, {"context": context}),
                                    reference(x_t, t, encoder_hidden_states=context).sample)
    print(f"SD UNet {config['block_out_channels']}: max |eps ours - eps diffusers| = {difference:.2e}")
    return difference


@pytest.mark.parametrize("config", [NARROW, NARROW_SD2], ids=["sd15", "sd2-linear-projection"])
def test_narrow_sd_unet_matches_diffusers(config, tmp_path):
    assert parity(config, tmp_path) <= 1e-4


@pytest.mark.slow
def test_full_sd15_unet_matches_diffusers(tmp_path):
    assert parity(SD15_UNET, tmp_path) <= 1e-4


def test_the_published_config_is_sd15_unet():
    kwargs = diffusers_sd_unet.network_config(SD15_UNET)
    assert kwargs == {"_target_": "models.unet.UNet", "in_channels": 4, "out_channels": 4, "base_channels": 320,
                      "channel_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attention_levels": [0, 1, 2], "num_heads": 8,
                      "head_dim": None, "dropout": 0.0, "context_dim": 768, "scale_shift": False, "norm_groups": 32,
                      "norm_eps": 1e-5, "emb_dim": None, "time_sin_first": False, "time_frequency_shift": 0,
                      "downsample_padding": 1, "linear_projection": False}
    with torch.device("meta"):  # shapes only: 860M parameters are not drawn
        network = build(OmegaConf.create(kwargs))
        reference = UNet2DConditionModel.from_config(SD15_UNET)
    count = sum(p.numel() for p in network.parameters())
    assert count == sum(p.numel() for p in reference.parameters()) and round(count / 1e6, 2) == 859.52


@pytest.fixture(scope="module")
def narrow():
    """(diffusers' narrow SD UNet with random weights, ours loaded from it)."""
    torch.manual_seed(0)
    reference = randomise(UNet2DConditionModel.from_config(NARROW))
    return reference, ours(diffusers_sd_unet.network_config(NARROW), diffusers_sd_unet.to_ours(reference.state_dict()))


def test_every_norm_has_diffusers_eps_and_every_layer_its_bias(narrow):
    """GroupNorm eps 1e-5 in resnets and conv_norm_out, 1e-6 in transformers; LayerNorm 1e-5; q, k, v without bias:
    each module of ours is found through the key table and compared with the diffusers module it came from."""
    reference, network = narrow
    published_keys = list(reference.state_dict())
    tagged = {key: torch.tensor([float(n)]) for n, key in enumerate(published_keys)}  # each tensor's index
    compared = 0
    for key, tag in diffusers_sd_unet.to_ours(tagged).items():
        if not key.endswith(".weight"):
            continue
        mine = network.get_submodule(key.removesuffix(".weight"))
        theirs = reference.get_submodule(published_keys[int(tag)].removesuffix(".weight"))
        assert type(mine) is type(theirs), key
        assert (mine.bias is None) == (theirs.bias is None), key
        if isinstance(theirs, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            assert mine.eps == theirs.eps, (key, mine.eps, theirs.eps)
            compared += 1
    assert compared == 22 * 2 + 1 + 16 * 4  # 22 resnets' 2 GroupNorms, the output's, 16 transformers' 1 + 3 LayerNorms


def test_the_single_file_layout_is_diffusers_own_reading_of_it(narrow):
    reference, network = narrow
    single = ldm_unet.from_ours(network.state_dict(), NARROW["block_out_channels"], 2, [0, 1, 2])
    single["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"] = torch.zeros(77, 32)
    converted = convert_ldm_unet_checkpoint(single, NARROW)  # diffusers' single-file loader, the reference reading
    expected = reference.state_dict()
    assert converted.keys() == expected.keys() and all(torch.equal(converted[k], expected[k]) for k in expected)
    back = ldm_unet.to_ours(single)
    assert back.keys() == network.state_dict().keys()
    assert all(torch.equal(back[k], tensor) for k, tensor in network.state_dict().items())
    assert ldm_unet.network_config(single) == diffusers_sd_unet.network_config(NARROW)
    assert ldm_unet.family(single) == "Stable Diffusion 1.x"


def test_half_precision_weights_load_as_float32(narrow):
    reference, network = narrow
    half = {key: tensor.half() for key, tensor in reference.state_dict().items()}
    single = ldm_unet.from_ours({k: t.half() for k, t in network.state_dict().items()}, NARROW["block_out_channels"], 2,
                                [0, 1, 2])
    for state in (diffusers_sd_unet.to_ours(half), ldm_unet.to_ours(single)):
        assert {tensor.dtype for tensor in state.values()} == {torch.float32}
        assert all(torch.equal(state[k], t.half().float()) for k, t in network.state_dict().items())


def test_full_files_read_their_ema_weights_unless_told(narrow):
    _, network = narrow
    single = ldm_unet.from_ours(network.state_dict(), NARROW["block_out_channels"], 2, [0, 1, 2])
    ema = {"model_ema." + key.removeprefix("model.").replace(".", ""): tensor + 1 for key, tensor in single.items()}
    full = {**single, **ema, "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1)}
    assert torch.equal(ldm_unet.to_ours(full)["conv_in.weight"], network.state_dict()["conv_in.weight"] + 1)
    assert torch.equal(ldm_unet.to_ours(full, use_ema=False)["conv_in.weight"], network.state_dict()["conv_in.weight"])


def test_an_sd2_single_file_reads_linear_projections_and_its_heads_are_given():
    torch.manual_seed(0)
    reference = UNet2DConditionModel.from_config({**NARROW_SD2, "cross_attention_dim": 1024})
    kwargs = diffusers_sd_unet.network_config(dict(reference.config))
    single = ldm_unet.from_ours(diffusers_sd_unet.to_ours(reference.state_dict()), [32, 64, 64, 64], 2, [0, 1, 2])
    assert ldm_unet.network_config(single, num_heads=None, head_dim=16) == kwargs
    assert ldm_unet.network_config(single)["head_dim"] == 64  # unless told: SD 2.x's num_head_channels
    assert kwargs["linear_projection"] and ldm_unet.family(single) == "Stable Diffusion 2.x"  # 1024-wide text


@pytest.mark.parametrize("key,expected", [
    ("cond_stage_model.transformer.text_model.embeddings.position_embedding.weight", "Stable Diffusion 1.x"),
    ("cond_stage_model.model.token_embedding.weight", "Stable Diffusion 2.x"),  # OpenCLIP ViT-H
    ("conditioner.embedders.1.model.positional_embedding", "SDXL"),
    ("model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias", "Stable Diffusion 3"),
    ("double_blocks.0.img_attn.norm.key_norm.scale", "Flux"),
    ("encoder.down.0.block.0.conv1.weight", None),
])
def test_a_single_file_family_is_read_from_its_keys(key, expected):
    state = {key: torch.zeros(1)}
    if expected and expected.startswith("Stable Diffusion ") and expected[-3:] in ("1.x", "2.x"):
        state["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = torch.zeros(320, 768)
    assert ldm_unet.family(state) == expected


def test_the_tables_go_both_ways(narrow):
    reference, _ = narrow
    weights = reference.state_dict()
    back = diffusers_sd_unet.from_ours(diffusers_sd_unet.to_ours(weights), 4, 2, [0, 1, 2])
    assert back.keys() == weights.keys() and all(torch.equal(back[key], weights[key]) for key in weights)


@pytest.mark.parametrize("key,value,named", [
    ("addition_embed_type", "text_time", "SDXL"),
    ("transformer_layers_per_block", [1, 2, 10], "SDXL"),
    ("attention_head_dim", [5, 10, 10, 20], "heads whose width differs"),
    ("down_block_types", ["SimpleCrossAttnDownBlock2D"] * 4, "down_block_types"),
    ("class_embed_type", "timestep", "class embedding"),
])
def test_a_config_the_unet_cannot_reproduce_is_refused_in_one_line(key, value, named):
    with pytest.raises(UserError, match=named) as error:
        diffusers_sd_unet.network_config({**SD15_UNET, key: value})
    assert "\n" not in str(error.value)


def test_an_sdxl_unet_single_file_is_refused_in_one_line(narrow):
    _, network = narrow
    single = ldm_unet.from_ours(network.state_dict(), NARROW["block_out_channels"], 2, [0, 1, 2])
    single["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(4, 4)
    assert ldm_unet.family(single) == "SDXL"
    with pytest.raises(UserError, match="SDXL"):
        ldm_unet.network_config(single)
