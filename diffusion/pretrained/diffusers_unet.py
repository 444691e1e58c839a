"""diffusers `UNet2DModel` (e.g. google/ddpm-cifar10-32, Ho et al. 2020) -> `models.unet.UNet`.

    from diffusion.pretrained import diffusers_unet
    kwargs = diffusers_unet.network_config(json.load(open(folder / "config.json")))  # {"_target_": ..., ...}
    ours = diffusers_unet.to_ours(safetensors.torch.load_file(folder / "diffusion_pytorch_model.safetensors"))
    network = instantiate(kwargs); network.load_state_dict(ours)       # strict: every tensor has a place

Where each published tensor lands (levels i, their blocks j; k counts our stages in order):

    diffusers UNet2DModel                            models.unet.UNet
    conv_in                                          conv_in
    time_embedding.linear_1 / linear_2               time_embed.0 / time_embed.2
    down_blocks.i.resnets.j                          down.k.block            (ResBlock, table RESNET)
    down_blocks.i.attentions.j                       down.k.attention        (SelfAttention2d, table ATTENTION)
    down_blocks.i.downsamplers.0.conv                down.k.block.conv       (Downsample)
    mid_block.resnets.0 / attentions.0 / resnets.1   middle.0.block / middle.0.attention / middle.1.block
    up_blocks.i.resnets.j, attentions.j              up.k.block, up.k.attention
    up_blocks.i.upsamplers.0.conv                    up.k.upsample.conv      (k: the level's last stage)
    conv_norm_out / conv_out                         norm_out / conv_out

up_blocks.0 is the lowest resolution (our up path starts there too). Older diffusers files name the attention's
layers query / key / value / proj_attn; they are read as to_q / to_k / to_v / to_out.0.
"""

from __future__ import annotations

from diffusion.errors import UserError
from diffusion.pretrained.table import WHOLE, convert, indices, modern_attention_names, row

SOURCE = "diffusers UNet2DModel"

RESNET = [  # diffusers ResnetBlock2D -> models.layers.ResBlock (additive time embedding)
    row("norm1", "norm1"),
    row("conv1", "conv1"),
    row("time_emb_proj", "emb"),
    row("norm2", "norm2"),
    row("conv2", "conv2"),
    row("conv_shortcut", "skip", optional=True),  # a 1x1 convolution where the width changes
]

ATTENTION = [  # diffusers Attention over H*W positions -> models.layers.SelfAttention2d
    row("group_norm", "norm"),
    row(("to_q", "to_k", "to_v"), "qkv", conv=True),  # three linear layers = one 1x1 convolution, stacked
    row("to_out.0", "proj_out", conv=True),
]


def key_table(levels: int, layers_per_block: int, attention_levels, attention=ATTENTION) -> list:
    """(published module, our module, rows) for a UNet2DModel of `levels` levels, attention at `attention_levels`.
    UNet2DConditionModel has the same layout with transformers for attention (`diffusers_sd_unet.TRANSFORMER`)."""
    table = [("conv_in", "conv_in", WHOLE),
             ("time_embedding.linear_1", "time_embed.0", WHOLE),
             ("time_embedding.linear_2", "time_embed.2", WHOLE)]
    stage = 0
    for level in range(levels):
        for j in range(layers_per_block):
            table.append((f"down_blocks.{level}.resnets.{j}", f"down.{stage}.block", RESNET))
            if level in attention_levels:
                table.append((f"down_blocks.{level}.attentions.{j}", f"down.{stage}.attention", attention))
            stage += 1
        if level < levels - 1:
            table.append((f"down_blocks.{level}.downsamplers.0.conv", f"down.{stage}.block.conv", WHOLE))
            stage += 1
    table += [("mid_block.resnets.0", "middle.0.block", RESNET),
              ("mid_block.attentions.0", "middle.0.attention", attention),
              ("mid_block.resnets.1", "middle.1.block", RESNET)]
    stage = 0
    for i, level in enumerate(reversed(range(levels))):
        for j in range(layers_per_block + 1):
            table.append((f"up_blocks.{i}.resnets.{j}", f"up.{stage}.block", RESNET))
            if level in attention_levels:
                table.append((f"up_blocks.{i}.attentions.{j}", f"up.{stage}.attention", attention))
            stage += 1
        if level > 0:
            table.append((f"up_blocks.{i}.upsamplers.0.conv", f"up.{stage - 1}.upsample.conv", WHOLE))
    return table + [("conv_norm_out", "norm_out", WHOLE), ("conv_out", "conv_out", WHOLE)]


def table_for(keys, attention=ATTENTION, source: str = SOURCE) -> list:
    """The key table for the UNet2DModel these published keys describe (levels, blocks and attention read from them)."""
    levels = len(indices(keys, "down_blocks."))
    layers_per_block = len(indices(keys, "down_blocks.0.resnets."))
    if not levels or not layers_per_block:
        raise UserError(f"{source}: no down_blocks.N.resnets.M keys; this is not a {source.split()[-1]} state dict")
    attention_levels = [level for level in range(levels) if indices(keys, f"down_blocks.{level}.attentions.")]
    return key_table(levels, layers_per_block, attention_levels, attention)


def to_ours(state_dict: dict) -> dict:
    """A diffusers UNet2DModel state dict -> one `models.unet.UNet` loads with strict=True."""
    state_dict = modern_attention_names(state_dict)
    return convert(table_for(state_dict), state_dict, SOURCE, to_ours=True)


def from_ours(state_dict: dict, levels: int, layers_per_block: int, attention_levels) -> dict:
    """Our UNet's state dict -> the UNet2DModel layout (current attention names)."""
    return convert(key_table(levels, layers_per_block, attention_levels), state_dict, "our UNet", to_ours=False)


# config keys the hand-written UNet reproduces at one value only: key -> (diffusers' default, the value it needs)
FIXED = {
    "act_fn": ("silu", "silu"),
    "time_embedding_type": ("positional", "positional"),
    "center_input_sample": (False, False),
    "resnet_time_scale_shift": ("default", "default"),  # the time embedding added, not FiLM
    "class_embed_type": (None, None),
    "num_class_embeds": (None, None),
    "mid_block_type": ("UNetMidBlock2D", "UNetMidBlock2D"),
    "add_attention": (True, True),
    "downsample_type": ("conv", "conv"),
    "upsample_type": ("conv", "conv"),
    "mid_block_scale_factor": (1, 1),
    "attn_norm_num_groups": (None, None),
    "norm_eps": (1e-5, 1e-6),  # our GroupNorm's eps where the groups divide the width
}


def network_config(config: dict) -> dict:
    """A UNet2DModel config.json (as a dict) -> `models.unet.UNet` keyword arguments, with `_target_`.

    Refuses, in one line, any setting the hand-written UNet cannot reproduce."""
    for key, (default, supported) in FIXED.items():
        if config.get(key, default) != supported:
            raise UserError(f"{SOURCE} config {key}={config.get(key, default)!r}: the hand-written UNet supports only "
                            f"{supported!r}")
    widths = list(config.get("block_out_channels", (224, 448, 672, 896)))
    base, groups = widths[0], config.get("norm_num_groups", 32)
    if any(width % base for width in widths) or any(width % groups for width in widths):
        raise UserError(f"{SOURCE} config block_out_channels={widths}: every width must be a multiple of the first "
                        f"and of norm_num_groups={groups}")
    down = list(config.get("down_block_types",
                           ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")))
    up = list(config.get("up_block_types", ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")))
    unknown = sorted(set(down) - {"DownBlock2D", "AttnDownBlock2D"}) + sorted(set(up) - {"UpBlock2D", "AttnUpBlock2D"})
    if unknown or len(down) != len(widths) or len(up) != len(widths):
        raise UserError(f"{SOURCE} config down_block_types={down} up_block_types={up}: supported are one "
                        f"(Attn)DownBlock2D and one (Attn)UpBlock2D per width")
    attention_levels = [level for level, kind in enumerate(down) if kind.startswith("Attn")]
    if attention_levels != [level for level, kind in enumerate(reversed(up)) if kind.startswith("Attn")]:
        raise UserError(f"{SOURCE} config: attention in down_block_types={down} and up_block_types={up} must be at "
                        f"the same levels")
    head_dim = config.get("attention_head_dim", 8)
    if head_dim is not None and any(width % head_dim for width in widths):
        raise UserError(f"{SOURCE} config attention_head_dim={head_dim} must divide every width in {widths}")
    time_dim = config.get("time_embedding_dim")
    return {
        "_target_": "models.unet.UNet",
        "in_channels": config.get("in_channels", 3),
        "out_channels": config.get("out_channels", 3),
        "base_channels": base,
        "channel_mult": [width // base for width in widths],
        "num_res_blocks": config.get("layers_per_block", 2),
        "attention_levels": attention_levels,
        "num_heads": 1 if head_dim is None else None,  # diffusers: no head width given = one head as wide as the block
        "head_dim": head_dim,
        "dropout": config.get("dropout", 0.0),
        "scale_shift": False,
        "norm_groups": groups,
        "emb_dim": None if time_dim in (None, 4 * base) else time_dim,
        "time_sin_first": not config.get("flip_sin_to_cos", True),
        "time_frequency_shift": config.get("freq_shift", 0),
        "downsample_padding": config.get("downsample_padding", 1),
    }
