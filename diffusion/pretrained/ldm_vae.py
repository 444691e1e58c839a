"""The LDM / Stable Diffusion single-file autoencoder (CompVis' `AutoencoderKL`, e.g.
`vae-ft-mse-840000-ema-pruned.safetensors` / `.ckpt`, or the `first_stage_model.*` part of a whole SD checkpoint)
-> `models.vae.AutoencoderKL`.

    from diffusion.pretrained import ldm_vae
    state_dict = safetensors.torch.load_file(path)          # or torch.load(path, weights_only=True)["state_dict"]
    kwargs = ldm_vae.network_config(state_dict)             # read from the tensors' shapes: the file has no config
    ours = ldm_vae.to_ours(state_dict)

Where each published tensor lands (levels i, their blocks j; k counts our layers in order):

    LDM / SD autoencoder                         models.vae.AutoencoderKL
    encoder.conv_in                              encoder.conv_in
    encoder.down.i.block.j                       encoder.down.k            (ResBlock, table RESNET)
    encoder.down.i.downsample.conv               encoder.down.k.down.conv  (Downsample, bottom/right padding)
    encoder.mid.block_1 / attn_1 / block_2       encoder.middle.0 / .1 / .2
    encoder.norm_out / conv_out                  encoder.norm_out / encoder.conv_out
    quant_conv / post_quant_conv                 quant_conv / post_quant_conv
    decoder.conv_in, decoder.mid                 decoder.conv_in, decoder.middle
    decoder.up.i.block.j                         decoder.up.k              (decoder.up.i is level i: the LAST index
    decoder.up.i.upsample.conv                   decoder.up.k.up.conv       is the lowest resolution, run first)
    decoder.norm_out / conv_out                  decoder.norm_out / decoder.conv_out

Keys under `first_stage_model.` are the autoencoder of a whole SD checkpoint: when there are any, only they are
read (the UNet and text encoder beside them are not this network). `loss.*` (LPIPS and the discriminator, which
LDM's training checkpoints carry) is dropped. The file holds no latent scale: SD's 0.18215 unless told otherwise.
"""

from __future__ import annotations

from diffusion.errors import UserError
from diffusion.pretrained.table import WHOLE, convert, indices, row

SOURCE = "LDM / SD autoencoder"
PREFIX = "first_stage_model."

RESNET = [  # LDM's ResnetBlock (no time embedding) -> models.layers.ResBlock(emb_dim=None)
    row("norm1", "norm1"),
    row("conv1", "conv1"),
    row("norm2", "norm2"),
    row("conv2", "conv2"),
    row("nin_shortcut", "skip", optional=True),  # a 1x1 convolution where the width changes
]

ATTENTION = [  # LDM's AttnBlock (1x1 convolutions, one head) -> models.layers.SelfAttention2d
    row("norm", "norm"),
    row(("q", "k", "v"), "qkv"),
    row("proj_out", "proj_out"),
]


def middle(published: str, ours: str) -> list:
    return [(f"{published}.block_1", f"{ours}.0", RESNET), (f"{published}.attn_1", f"{ours}.1", ATTENTION),
            (f"{published}.block_2", f"{ours}.2", RESNET)]


def key_table(levels: int, layers_per_block: int) -> list:
    """(published module, our module, rows) for an LDM autoencoder of `levels` levels."""
    table = [("encoder.conv_in", "encoder.conv_in", WHOLE)]
    k = 0
    for level in range(levels):
        for j in range(layers_per_block):
            table.append((f"encoder.down.{level}.block.{j}", f"encoder.down.{k}", RESNET))
            k += 1
        if level < levels - 1:
            table.append((f"encoder.down.{level}.downsample.conv", f"encoder.down.{k}.down.conv", WHOLE))
            k += 1
    table += [*middle("encoder.mid", "encoder.middle"),
              ("encoder.norm_out", "encoder.norm_out", WHOLE), ("encoder.conv_out", "encoder.conv_out", WHOLE),
              ("quant_conv", "quant_conv", WHOLE), ("post_quant_conv", "post_quant_conv", WHOLE),
              ("decoder.conv_in", "decoder.conv_in", WHOLE), *middle("decoder.mid", "decoder.middle")]
    k = 0
    for level in reversed(range(levels)):
        for j in range(layers_per_block + 1):
            table.append((f"decoder.up.{level}.block.{j}", f"decoder.up.{k}", RESNET))
            k += 1
        if level > 0:
            table.append((f"decoder.up.{level}.upsample.conv", f"decoder.up.{k}.up.conv", WHOLE))
            k += 1
    return table + [("decoder.norm_out", "decoder.norm_out", WHOLE), ("decoder.conv_out", "decoder.conv_out", WHOLE)]


def autoencoder_part(state_dict: dict) -> dict:
    """The autoencoder's own tensors: those under `first_stage_model.` when there are any, without `loss.*`."""
    if any(key.startswith(PREFIX) for key in state_dict):
        state_dict = {key[len(PREFIX):]: tensor for key, tensor in state_dict.items() if key.startswith(PREFIX)}
    return {key: tensor for key, tensor in state_dict.items() if not key.startswith("loss.")}


def structure(state_dict: dict) -> tuple[int, int]:
    levels = len(indices(state_dict, "encoder.down."))
    layers_per_block = len(indices(state_dict, "encoder.down.0.block."))
    if not levels or not layers_per_block:
        raise UserError(f"{SOURCE}: no encoder.down.N.block.M keys; this is not an LDM / SD autoencoder")
    return levels, layers_per_block


def to_ours(state_dict: dict) -> dict:
    """An LDM / SD autoencoder state dict (with or without `first_stage_model.`) -> our AutoencoderKL's, strict."""
    state_dict = autoencoder_part(state_dict)
    return convert(key_table(*structure(state_dict)), state_dict, SOURCE, to_ours=True)


def from_ours(state_dict: dict, levels: int, layers_per_block: int, prefix: str = "") -> dict:
    """Our autoencoder's state dict -> the LDM layout; `prefix=ldm_vae.PREFIX` as inside a whole SD checkpoint."""
    published = convert(key_table(levels, layers_per_block), state_dict, "our AutoencoderKL", to_ours=False)
    return {prefix + key: tensor for key, tensor in published.items()}


def network_config(state_dict: dict, scale_factor: float = 0.18215) -> dict:
    """`models.vae.AutoencoderKL` keyword arguments (with `_target_`) read from the tensors' shapes.
    `scale_factor`: the latent scale, which the file does not hold (SD 1.x / 2.x and DiT: 0.18215; SDXL: 0.13025)."""
    state_dict = autoencoder_part(state_dict)
    levels, layers_per_block = structure(state_dict)
    try:
        conv_in = state_dict["encoder.conv_in.weight"]  # (base, image channels, 3, 3)
        widths = [state_dict[f"encoder.down.{level}.block.0.conv1.weight"].shape[0] for level in range(levels)]
        latent_channels = state_dict["post_quant_conv.weight"].shape[0]
    except KeyError as missing:
        raise UserError(f"{SOURCE}: no {missing} tensor; this is not an LDM / SD autoencoder") from None
    base = conv_in.shape[0]
    if any(width % base or width % 32 for width in widths):
        raise UserError(f"{SOURCE}: widths {widths} must be multiples of the first and of 32 (GroupNorm's groups)")
    return {
        "_target_": "models.vae.AutoencoderKL",
        "in_channels": conv_in.shape[1],
        "base_channels": base,
        "channel_mult": [width // base for width in widths],
        "num_res_blocks": layers_per_block,
        "latent_channels": latent_channels,
        "attention": True,
        "dropout": 0.0,
        "shortcuts": False,
        "width_change": "first_block",
        "downsample_padding": 0,
        "quant_convs": True,
        "scale_factor": scale_factor,
    }
