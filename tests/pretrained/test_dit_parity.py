"""The hand-written DiT is DiT-XL/2 (facebook/DiT-XL-2-256): random weights at the published config, saved by diffusers'
DiTTransformer2DModel, give its 8 output channels (epsilon and the learned variance) within 1e-4, class-conditional;
the same weights written as facebookresearch/DiT's own `.pt` load to a bit-identical network."""

import pytest
import torch
from diffusers import DiTTransformer2DModel

from diffusion.errors import UserError
from diffusion.pretrained import diffusers_dit, dit_original
from models.dit import sincos_2d
from published import DIT_XL_2_256, max_difference, ours, randomise, saved_and_read

# the same blocks, 2 heads of 16 channels and 2 blocks deep, on 8x8 latents
NARROW = {**DIT_XL_2_256, "num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2, "sample_size": 8}


def published_dit(config: dict) -> DiTTransformer2DModel:
    """Random weights in the published layout: as diffusers' converter writes them, every block holds the same copy
    of the timestep and class embedding."""
    torch.manual_seed(0)
    model = randomise(DiTTransformer2DModel.from_config(config))
    shared = model.transformer_blocks[0].norm1.emb.state_dict()
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(shared)
    return model


def inputs(config: dict):
    side = config["sample_size"]
    x_t = torch.randn(3, 4, side, side)
    return x_t, torch.tensor([0, 250, 999]), torch.tensor([207, 1, 1000])  # 1000: the "no class" label


def parity(config: dict, folder) -> float:
    reference = published_dit(config)
    published_config, weights = saved_and_read(reference, folder)
    network = ours(diffusers_dit.network_config(published_config), diffusers_dit.to_ours(weights))
    x_t, t, labels = inputs(config)
    with torch.no_grad():
        expected = reference(x_t, t, labels).sample
        output = network(x_t, t, {"class_labels": labels})
    assert output.shape == (3, 8, *x_t.shape[2:])  # epsilon and the learned variance's interpolation weights
    difference = max_difference(output, expected)
    print(f"DiT {config['num_layers']} x {config['num_attention_heads'] * config['attention_head_dim']}: "
          f"max |ours - diffusers| over 8 channels = {difference:.2e}")
    return difference


def test_narrow_dit_matches_diffusers(tmp_path):
    assert parity(NARROW, tmp_path) <= 1e-4


@pytest.mark.slow
def test_full_dit_xl_2_256_matches_diffusers(tmp_path):
    assert parity(DIT_XL_2_256, tmp_path) <= 1e-4


def original_keys(depth: int) -> set[str]:
    """facebookresearch/DiT's state dict keys (models.py: DiT, DiTBlock, FinalLayer over timm's layers)."""
    both = ("weight", "bias")
    keys = {"pos_embed", "y_embedder.embedding_table.weight"}
    keys |= {f"{layer}.{end}" for layer in ("x_embedder.proj", "t_embedder.mlp.0", "t_embedder.mlp.2",
                                            "final_layer.linear", "final_layer.adaLN_modulation.1") for end in both}
    keys |= {f"blocks.{n}.{layer}.{end}" for n in range(depth) for end in both
             for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")}
    return keys


def test_the_original_single_file_loads_to_a_bit_identical_network(tmp_path):
    reference = published_dit(NARROW)
    published_config, weights = saved_and_read(reference, tmp_path / "diffusers")
    from_diffusers = ours(diffusers_dit.network_config(published_config), diffusers_dit.to_ours(weights))

    grid = NARROW["sample_size"] // NARROW["patch_size"]
    original = dit_original.from_ours(from_diffusers.state_dict())
    original["pos_embed"] = sincos_2d(grid, grid, 32, columns_first=True)[None]
    assert original.keys() == original_keys(depth=2)
    torch.save(original, tmp_path / "DiT-XL-2-256x256.pt")
    read = torch.load(tmp_path / "DiT-XL-2-256x256.pt", map_location="cpu", weights_only=True)
    kwargs = dit_original.network_config(read, num_heads=2)
    from_original = ours(kwargs, dit_original.to_ours(read))
    assert dit_original.image_grid(read) == grid

    ours_a, ours_b = from_diffusers.state_dict(), from_original.state_dict()
    assert ours_a.keys() == ours_b.keys() and all(torch.equal(ours_a[key], ours_b[key]) for key in ours_a)
    # the two sources differ in two documented details of diffusers' DiT, and nothing else
    differ = {key for key in kwargs if kwargs[key] != diffusers_dit.network_config(published_config).get(key)}
    assert differ == {"time_frequency_shift", "mlp_norm_eps"}

    # the original code's function is diffusers' with those two details set back: the same outputs
    for block in reference.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
        block.norm3.eps = 1e-6
    x_t, t, labels = inputs(NARROW)
    with torch.no_grad():
        difference = max_difference(from_original(x_t, t, {"class_labels": labels}), reference(x_t, t, labels).sample)
    print(f"original DiT layout: max |ours - diffusers set to the original's details| = {difference:.2e}")
    assert difference <= 1e-4


def test_the_published_configs_are_dit_xl_2():
    expected = {"_target_": "models.dit.DiT", "in_channels": 4, "out_channels": 8, "patch_size": 2,
                "hidden_size": 1152, "depth": 28, "num_heads": 16, "mlp_ratio": 4.0, "num_classes": 1001,
                "text_conditional": False, "position_columns_first": True}
    assert diffusers_dit.network_config(DIT_XL_2_256) == {**expected, "time_frequency_shift": 1, "mlp_norm_eps": 1e-5}
    expected.update(time_frequency_shift=0, mlp_norm_eps=1e-6)  # the original code's details
    shapes = {"x_embedder.proj.weight": (1152, 4, 2, 2), "final_layer.linear.weight": (32, 1152),
              "blocks.0.mlp.fc1.weight": (4608, 1152), "y_embedder.embedding_table.weight": (1001, 1152),
              **{f"blocks.{n}.attn.qkv.weight": (3456, 1152) for n in range(28)}}
    assert dit_original.network_config({key: torch.empty(shape, device="meta") for key, shape in shapes.items()}) \
        == expected


def test_unequal_copies_of_the_embedding_are_refused():
    model = DiTTransformer2DModel.from_config(NARROW)  # fresh from diffusers: every block's embedding drawn anew
    with pytest.raises(UserError, match="transformer_blocks.1.norm1.emb.* differs from transformer_blocks.0"):
        diffusers_dit.to_ours(model.state_dict())


def test_a_file_that_is_not_a_dit_is_refused():
    with pytest.raises(UserError, match="not a facebookresearch/DiT state dict"):
        dit_original.to_ours({"encoder.conv_in.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="norm_type"):
        diffusers_dit.network_config({**DIT_XL_2_256, "norm_type": "ada_norm_single"})
