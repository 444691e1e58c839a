"""diffusers `AutoencoderKL` (Stable Diffusion's `vae/`, kl-f8; Rombach et al. 2022) -> `models.vae.AutoencoderKL`.

    from diffusion.pretrained import diffusers_vae
    kwargs = diffusers_vae.network_config(json.load(open(folder / "config.json")))
    ours = diffusers_vae.to_ours(safetensors.torch.load_file(folder / "diffusion_pytorch_model.safetensors"))

Where each published tensor lands (levels i, their blocks j; k counts our layers in order):

    diffusers AutoencoderKL                          models.vae.AutoencoderKL
    encoder.conv_in                                  encoder.conv_in
    encoder.down_blocks.i.resnets.j                  encoder.down.k            (ResBlock, table RESNET)
    encoder.down_blocks.i.downsamplers.0.conv        encoder.down.k.down.conv  (Downsample, bottom/right padding)
    encoder.mid_block.resnets.0 / attentions.0 / resnets.1    encoder.middle.0 / .1 / .2
    encoder.conv_norm_out / conv_out                 encoder.norm_out / encoder.conv_out
    quant_conv / post_quant_conv                     quant_conv / post_quant_conv
    decoder.conv_in, decoder.mid_block               decoder.conv_in, decoder.middle
    decoder.up_blocks.i.resnets.j                    decoder.up.k              (up_blocks.0: the lowest resolution)
    decoder.up_blocks.i.upsamplers.0.conv            decoder.up.k.up.conv
    decoder.conv_norm_out / conv_out                 decoder.norm_out / decoder.conv_out

A level's first residual block changes the width (our width_change="first_block"). Older diffusers files name the
attention's layers query / key / value / proj_attn; they are read as to_q / to_k / to_v / to_out.0.
"""

from __future__ import annotations

from diffusion.errors import UserError
from diffusion.pretrained.diffusers_unet import ATTENTION
from diffusion.pretrained.table import WHOLE, convert, indices, modern_attention_names, row

SOURCE = "diffusers AutoencoderKL"

RESNET = [  # diffusers ResnetBlock2D without a time embedding -> models.layers.ResBlock(emb_dim=None)
    row("norm1", "norm1"),
    row("conv1", "conv1"),
    row("norm2", "norm2"),
    row("conv2", "conv2"),
    row("conv_shortcut", "skip", optional=True),  # a 1x1 convolution where the width changes
]


def middle(published: str, ours: str) -> list:
    return [(f"{published}.resnets.0", f"{ours}.0", RESNET), (f"{published}.attentions.0", f"{ours}.1", ATTENTION),
            (f"{published}.resnets.1", f"{ours}.2", RESNET)]


def key_table(levels: int, layers_per_block: int) -> list:
    """(published module, our module, rows) for an AutoencoderKL of `levels` levels (mid-block attention, quant convs)."""
    table = [("encoder.conv_in", "encoder.conv_in", WHOLE)]
    k = 0
    for level in range(levels):
        for j in range(layers_per_block):
            table.append((f"encoder.down_blocks.{level}.resnets.{j}", f"encoder.down.{k}", RESNET))
            k += 1
        if level < levels - 1:
            table.append((f"encoder.down_blocks.{level}.downsamplers.0.conv", f"encoder.down.{k}.down.conv", WHOLE))
            k += 1
    table += [*middle("encoder.mid_block", "encoder.middle"),
              ("encoder.conv_norm_out", "encoder.norm_out", WHOLE), ("encoder.conv_out", "encoder.conv_out", WHOLE),
              ("quant_conv", "quant_conv", WHOLE), ("post_quant_conv", "post_quant_conv", WHOLE),
              ("decoder.conv_in", "decoder.conv_in", WHOLE), *middle("decoder.mid_block", "decoder.middle")]
    k = 0
    for i in range(levels):  # up_blocks.0 is the lowest resolution, as our decoder.up starts
        for j in range(layers_per_block + 1):
            table.append((f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{k}", RESNET))
            k += 1
        if i < levels - 1:
            table.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{k}.up.conv", WHOLE))
            k += 1
    return table + [("decoder.conv_norm_out", "decoder.norm_out", WHOLE),
                    ("decoder.conv_out", "decoder.conv_out", WHOLE)]


def to_ours(state_dict: dict) -> dict:
    """A diffusers AutoencoderKL state dict -> one `models.vae.AutoencoderKL` loads with strict=True."""
    state_dict = modern_attention_names(state_dict)
    levels = len(indices(state_dict, "encoder.down_blocks."))
    layers_per_block = len(indices(state_dict, "encoder.down_blocks.0.resnets."))
    if not levels or not layers_per_block:
        raise UserError(f"{SOURCE}: no encoder.down_blocks.N.resnets.M keys; this is not an AutoencoderKL state dict")
    return convert(key_table(levels, layers_per_block), state_dict, SOURCE, to_ours=True)


def from_ours(state_dict: dict, levels: int, layers_per_block: int) -> dict:
    """Our autoencoder's state dict -> the diffusers layout (current attention names)."""
    return convert(key_table(levels, layers_per_block), state_dict, "our AutoencoderKL", to_ours=False)


# config keys the hand-written autoencoder reproduces at one value only: key -> (diffusers' default, the value it needs)
FIXED = {
    "act_fn": ("silu", "silu"),
    "norm_num_groups": (32, 32),
    "use_quant_conv": (True, True),
    "use_post_quant_conv": (True, True),
    "mid_block_add_attention": (True, True),
    "shift_factor": (None, None),  # SD 3 / FLUX latents are shifted too; SD 1-2 and DiT's are only scaled
    "latents_mean": (None, None),
    "latents_std": (None, None),
}


def network_config(config: dict) -> dict:
    """An AutoencoderKL config.json (as a dict) -> `models.vae.AutoencoderKL` keyword arguments, with `_target_`.

    Refuses, in one line, any setting the hand-written autoencoder cannot reproduce."""
    for key, (default, supported) in FIXED.items():
        if config.get(key, default) != supported:
            raise UserError(f"{SOURCE} config {key}={config.get(key, default)!r}: the hand-written autoencoder "
                            f"supports only {supported!r}")
    widths = list(config.get("block_out_channels", (64,)))
    base = widths[0]
    down, up = config.get("down_block_types", ("DownEncoderBlock2D",)), config.get("up_block_types", ("UpDecoderBlock2D",))
    if set(down) != {"DownEncoderBlock2D"} or set(up) != {"UpDecoderBlock2D"} or len(down) != len(widths) \
            or len(up) != len(widths) or any(width % base or width % 32 for width in widths):
        raise UserError(f"{SOURCE} config down_block_types={list(down)} up_block_types={list(up)} "
                        f"block_out_channels={widths}: supported are DownEncoderBlock2D / UpDecoderBlock2D, one per "
                        f"width, every width a multiple of the first and of 32")
    if config.get("in_channels", 3) != config.get("out_channels", 3):
        raise UserError(f"{SOURCE} config in_channels={config.get('in_channels')} out_channels="
                        f"{config.get('out_channels')}: the hand-written autoencoder gives back the channels it takes")
    return {
        "_target_": "models.vae.AutoencoderKL",
        "in_channels": config.get("in_channels", 3),
        "base_channels": base,
        "channel_mult": [width // base for width in widths],
        "num_res_blocks": config.get("layers_per_block", 1),
        "latent_channels": config.get("latent_channels", 4),
        "attention": True,
        "dropout": 0.0,
        "shortcuts": False,
        "width_change": "first_block",
        "downsample_padding": 0,
        "quant_convs": True,
        "scale_factor": config.get("scaling_factor", 0.18215),
    }
