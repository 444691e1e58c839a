"""The Stable Diffusion single file's UNet (CompVis / Stability's `openaimodel.UNetModel`, the `model.diffusion_model.*`
part of `v1-5-pruned-emaonly.safetensors`) -> `models.unet.UNet`; and which family a single file is.

    from diffusion.pretrained import ldm_unet
    state_dict = safetensors.torch.load_file("v1-5-pruned-emaonly.safetensors")
    ldm_unet.family(state_dict)                # "Stable Diffusion 1.x" (or 2.x, SDXL, Stable Diffusion 3, Flux, None)
    kwargs = ldm_unet.network_config(state_dict)   # read from the tensors' shapes; heads: SD 1.x's 8 unless told
    ours = ldm_unet.to_ours(state_dict)

Where each published tensor lands (k counts our stages; the original counts the same blocks from 1 on the way down):

    LDM UNetModel (model.diffusion_model.)       models.unet.UNet
    time_embed.0 / time_embed.2                  time_embed.0 / time_embed.2
    input_blocks.0.0                             conv_in
    input_blocks.k+1.0                           down.k.block              (ResBlock, table RESNET)
    input_blocks.k+1.1                           down.k.attention          (SpatialTransformer, diffusers' names)
    input_blocks.k+1.0.op                        down.k.block.conv         (Downsample)
    middle_block.0 / .1 / .2                     middle.0.block / middle.0.attention / middle.1.block
    output_blocks.k.0 / .1                       up.k.block / up.k.attention
    output_blocks.k.1.conv or .2.conv            up.k.upsample.conv        (after the transformer where there is one)
    out.0 / out.2                                norm_out / conv_out

The file holds no config: widths, levels, blocks, transformer levels, context width and the projection (a [C, C, 1, 1]
convolution in SD 1.x, a [C, C] linear layer in SD 2.x) are read from shapes. The head count is not in any tensor:
SD 1.x's v1-inference.yaml says `num_heads: 8`, SD 2.x's `num_head_channels: 64`.
"""

from __future__ import annotations

from diffusion.errors import UserError
from diffusion.pretrained.diffusers_sd_unet import TRANSFORMER
from diffusion.pretrained.table import WHOLE, convert, float32, indices, row

SOURCE = "SD single-file UNet"
PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."  # full (not pruned) files also hold the EMA weights, under names without their dots

RESNET = [  # LDM's ResBlock (openaimodel) -> models.layers.ResBlock (additive time embedding)
    row("in_layers.0", "norm1"),
    row("in_layers.2", "conv1"),
    row("emb_layers.1", "emb"),
    row("out_layers.0", "norm2"),
    row("out_layers.3", "conv2"),
    row("skip_connection", "skip", optional=True),  # a 1x1 convolution where the width changes
]

# ---------------------------------------------------------------------------------------------- which file is it

# One key (or key prefix) each family's single file has and the others lack, checked in this order.
FAMILIES = (
    ("Flux", ("double_blocks.", "model.diffusion_model.double_blocks.")),
    ("Stable Diffusion 3", ("joint_blocks.", "model.diffusion_model.joint_blocks.")),
    ("SDXL", ("conditioner.embedders.", "model.diffusion_model.label_emb.")),
    ("Stable Diffusion 2.x", ("cond_stage_model.model.",)),  # OpenCLIP ViT-H text encoder
    ("Stable Diffusion 1.x", ("model.diffusion_model.input_blocks.",)),
)


def family(state_dict: dict) -> str | None:
    """The model family a single file's keys say it is ("Stable Diffusion 1.x", "Stable Diffusion 2.x", "SDXL",
    "Stable Diffusion 3", "Flux"), or None. A UNet-only SD 2.x file (no text encoder) is told apart from SD 1.x by
    its 1024-wide cross-attention (OpenCLIP ViT-H) against 768 (CLIP ViT-L)."""
    for name, prefixes in FAMILIES:
        if any(key.startswith(prefixes) for key in state_dict):
            if name == "Stable Diffusion 1.x" and context_width(unet_part(state_dict, use_ema=False)) == 1024:
                return "Stable Diffusion 2.x"
            return name
    return None


# ---------------------------------------------------------------------------------------------- the key table


def unet_part(state_dict: dict, use_ema: bool = True) -> dict:
    """The UNet's own tensors, prefix removed: `model.diffusion_model.*`, or their EMA copies when the file holds
    them (`model_ema.diffusion_modelinput_blocks00weight`: the same names with the dots taken out) and `use_ema`."""
    if not any(key.startswith(PREFIX) for key in state_dict):
        return state_dict  # a bare UNet state dict
    unet = {key[len(PREFIX):]: tensor for key, tensor in state_dict.items() if key.startswith(PREFIX)}
    if not use_ema:
        return unet
    ema_names = {name: EMA_PREFIX + ("diffusion_model." + name).replace(".", "") for name in unet}
    if all(flat in state_dict for flat in ema_names.values()):
        return {name: state_dict[flat] for name, flat in ema_names.items()}
    return unet


def key_table(widths: list, layers_per_block: int, attention_levels) -> list:
    """(published module, our module, rows) for a UNet of len(widths) levels, transformers at `attention_levels`."""
    levels = len(widths)
    table = [("time_embed.0", "time_embed.0", WHOLE), ("time_embed.2", "time_embed.2", WHOLE),
             ("input_blocks.0.0", "conv_in", WHOLE)]
    k = 0
    for level in range(levels):
        for _ in range(layers_per_block):
            table.append((f"input_blocks.{k + 1}.0", f"down.{k}.block", RESNET))
            if level in attention_levels:
                table.append((f"input_blocks.{k + 1}.1", f"down.{k}.attention", TRANSFORMER))
            k += 1
        if level < levels - 1:
            table.append((f"input_blocks.{k + 1}.0.op", f"down.{k}.block.conv", WHOLE))
            k += 1
    table += [("middle_block.0", "middle.0.block", RESNET), ("middle_block.1", "middle.0.attention", TRANSFORMER),
              ("middle_block.2", "middle.1.block", RESNET)]
    k = 0
    for level in reversed(range(levels)):
        for j in range(layers_per_block + 1):
            table.append((f"output_blocks.{k}.0", f"up.{k}.block", RESNET))
            if level in attention_levels:
                table.append((f"output_blocks.{k}.1", f"up.{k}.attention", TRANSFORMER))
            if level > 0 and j == layers_per_block:
                upsample = 2 if level in attention_levels else 1
                table.append((f"output_blocks.{k}.{upsample}.conv", f"up.{k}.upsample.conv", WHOLE))
            k += 1
    return table + [("out.0", "norm_out", WHOLE), ("out.2", "conv_out", WHOLE)]


def structure(unet: dict) -> tuple[list, int, list]:
    """(widths, residual blocks a level, transformer levels) read from the tensors: a level ends at a downsampler."""
    blocks = indices(unet, "input_blocks.")
    if not blocks or "out.2.weight" not in unet:
        raise UserError(f"{SOURCE}: no input_blocks.N / out.2 keys; this is not a Stable Diffusion UNet")
    widths, attention_levels, per_level, count = [], [], [], 0
    for block in blocks[1:]:
        if f"input_blocks.{block}.0.op.weight" in unet:  # a downsampler closes the level
            per_level.append(count)
            count = 0
            continue
        if f"input_blocks.{block}.0.out_layers.3.weight" not in unet:
            raise UserError(f"{SOURCE}: input_blocks.{block} is neither a residual block nor a downsampler")
        width = unet[f"input_blocks.{block}.0.out_layers.3.weight"].shape[0]
        if count == 0:
            widths.append(width)
            if f"input_blocks.{block}.1.proj_in.weight" in unet:
                attention_levels.append(len(widths) - 1)
        count += 1
    per_level.append(count)
    if len(set(per_level)) != 1:
        raise UserError(f"{SOURCE}: levels of {per_level} residual blocks; the hand-written UNet has as many at every level")
    return widths, per_level[0], attention_levels


def context_width(unet: dict) -> int | None:
    """The text states' width the cross-attention reads: 768 (CLIP ViT-L, SD 1.x) or 1024 (OpenCLIP ViT-H, SD 2.x)."""
    key = next((key for key in unet if key.endswith("attn2.to_k.weight")), None)
    return None if key is None else unet[key].shape[1]


def to_ours(state_dict: dict, use_ema: bool = True) -> dict:
    """The UNet of an SD single file (with or without `model.diffusion_model.`) -> our UNet's state dict (strict,
    float32)."""
    unet = unet_part(state_dict, use_ema)
    return float32(convert(key_table(*structure(unet)), unet, SOURCE, to_ours=True))


def from_ours(state_dict: dict, widths: list, layers_per_block: int, attention_levels, prefix: str = PREFIX) -> dict:
    """Our UNet's state dict -> the single-file layout, under `prefix` as inside a whole SD checkpoint."""
    published = convert(key_table(widths, layers_per_block, attention_levels), state_dict, "our UNet", to_ours=False)
    return {prefix + key: tensor for key, tensor in published.items()}


def network_config(state_dict: dict, num_heads: int | None = None, head_dim: int | None = None) -> dict:
    """`models.unet.UNet` keyword arguments (with `_target_`) read from the tensors' shapes. The heads are not in the
    file: unless given, SD 1.x's 8 heads (768-wide text), or SD 2.x's 64 channels a head (1024-wide text)."""
    unet = unet_part(state_dict, use_ema=False)
    widths, layers_per_block, attention_levels = structure(unet)
    if num_heads is None and head_dim is None:
        num_heads, head_dim = (None, 64) if context_width(unet) == 1024 else (8, None)
    depth = len(indices(unet, "middle_block.1.transformer_blocks."))
    if depth > 1 or "label_emb.0.0.weight" in unet:
        raise UserError(f"{SOURCE}: {depth} transformer blocks a layer or an added label embedding (SDXL) are not "
                        f"supported; Stable Diffusion 1.x and 2.x UNets are")
    conv_in, time_in = unet["input_blocks.0.0.weight"], unet["time_embed.0.weight"]  # (base, C, 3, 3), (emb, base)
    base = conv_in.shape[0]
    if any(width % base or width % 32 for width in widths):
        raise UserError(f"{SOURCE}: widths {widths} must be multiples of the first and of 32 (GroupNorm's groups)")
    projection = unet.get("middle_block.1.proj_in.weight")
    return {
        "_target_": "models.unet.UNet",
        "in_channels": conv_in.shape[1],
        "out_channels": unet["out.2.weight"].shape[0],
        "base_channels": base,
        "channel_mult": [width // base for width in widths],
        "num_res_blocks": layers_per_block,
        "attention_levels": attention_levels,
        "num_heads": num_heads,
        "head_dim": head_dim,
        "dropout": 0.0,
        "context_dim": context_width(unet),
        "scale_shift": False,  # LDM's use_scale_shift_norm: False in every SD config
        "norm_groups": 32,  # LDM's GroupNorm32 (eps 1e-5) in resnets and out.0; the transformers' Normalize: eps 1e-6
        "norm_eps": 1e-5,
        "emb_dim": None if time_in.shape[0] == 4 * base else time_in.shape[0],
        "time_sin_first": False,  # LDM's timestep_embedding: [cos, sin], frequencies 10000^(-i / half)
        "time_frequency_shift": 0,
        "downsample_padding": 1,
        "linear_projection": projection is not None and projection.ndim == 2,
    }
