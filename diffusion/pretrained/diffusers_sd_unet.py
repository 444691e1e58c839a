"""diffusers `UNet2DConditionModel` (Stable Diffusion 1.x / 2.x, `unet/` of a pipeline folder) -> `models.unet.UNet`.

    from diffusion.pretrained import diffusers_sd_unet
    kwargs = diffusers_sd_unet.network_config(json.load(open(folder / "unet" / "config.json")))
    ours = diffusers_sd_unet.to_ours(safetensors.torch.load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"))

The layout is UNet2DModel's (`diffusers_unet.key_table`: down_blocks / mid_block / up_blocks, time_embedding,
conv_norm_out) with a transformer in place of each attention layer:

    diffusers Transformer2DModel (attentions.j)      models.layers.SpatialTransformer
    norm / proj_in / proj_out                        norm / proj_in / proj_out (1x1 convs; linear layers in SD 2.x)
    transformer_blocks.0.norm1 / attn1               block.norm1 / block.self_attn
    transformer_blocks.0.norm2 / attn2               block.norm2 / block.cross_attn   (keys, values from the text)
    transformer_blocks.0.norm3 / ff.net.0.proj       block.norm3 / block.ff.proj_in   (GEGLU: value and gate, fused)
    transformer_blocks.0.ff.net.2                    block.ff.proj_out

The SD 1.5 config (runwayml/stable-diffusion-v1-5 unet/config.json): 320 x (1, 2, 4, 4), two residual blocks a level,
transformers at levels 0-2 and in the middle, none at level 3, cross-attention to 768-wide CLIP states, and
`attention_head_dim: 8`, which diffusers reads as 8 heads at every width (its historical misnaming: 40, 80, 160
channels a head). Resnets and the output norm use GroupNorm eps 1e-5 (`norm_eps`), the transformers' GroupNorm 1e-6.
"""

from __future__ import annotations

from diffusion.errors import UserError
from diffusion.pretrained.diffusers_unet import key_table, table_for
from diffusion.pretrained.table import convert, float32, row

SOURCE = "diffusers UNet2DConditionModel"

# runwayml/stable-diffusion-v1-5 unet/config.json (the published values that shape the network): for tools and tests
# that build SD 1.5's UNet without a download (benchmarks/sd15.py, tests/pretrained)
SD15_CONFIG = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

ATTENTION = [  # diffusers Attention -> models.layers.Attention (q, k, v without bias, as in Rombach et al.'s code)
    row("to_q", "to_q"),
    row("to_k", "to_k"),
    row("to_v", "to_v"),
    row("to_out.0", "to_out"),
]

TRANSFORMER = [  # diffusers Transformer2DModel with one BasicTransformerBlock -> models.layers.SpatialTransformer
    row("norm", "norm"),
    row("proj_in", "proj_in"),
    *[row(f"transformer_blocks.0.{published}", f"block.{ours}") for published, ours in (
        ("norm1", "norm1"), ("norm2", "norm2"), ("norm3", "norm3"),
        ("ff.net.0.proj", "ff.proj_in"), ("ff.net.2", "ff.proj_out"))],
    *[row(f"transformer_blocks.0.{attn}.{r.published[0]}", f"block.{ours}.{r.ours[0]}")
      for attn, ours in (("attn1", "self_attn"), ("attn2", "cross_attn")) for r in ATTENTION],
    row("proj_out", "proj_out"),
]

# Diffusers classes of denoisers this UNet is not: named when refused.
REFUSED_CLASSES = {"SD3Transformer2DModel": "Stable Diffusion 3", "FluxTransformer2DModel": "Flux"}


def to_ours(state_dict: dict) -> dict:
    """A diffusers UNet2DConditionModel state dict -> one `models.unet.UNet` loads with strict=True (float32)."""
    return float32(convert(table_for(state_dict, TRANSFORMER, SOURCE), state_dict, SOURCE, to_ours=True))


def from_ours(state_dict: dict, levels: int, layers_per_block: int, attention_levels) -> dict:
    """Our UNet's state dict -> the UNet2DConditionModel layout."""
    table = key_table(levels, layers_per_block, attention_levels, TRANSFORMER)
    return convert(table, state_dict, "our UNet", to_ours=False)


# config keys the hand-written UNet reproduces at one value only: key -> (diffusers' default, the value it needs, what
# another value is, so the refusal names it)
FIXED = {
    "act_fn": ("silu", "silu", "the activation"),
    "center_input_sample": (False, False, "input centring"),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", "UNetMidBlock2DCrossAttn", "the middle block"),
    "only_cross_attention": (False, False, "transformers without self-attention"),
    "mid_block_only_cross_attention": (None, None, "a middle transformer without self-attention"),
    "dual_cross_attention": (False, False, "two text encoders' cross-attention"),
    "mid_block_scale_factor": (1, 1, "a scaled middle block"),
    "resnet_time_scale_shift": ("default", "default", "FiLM time conditioning"),
    "resnet_skip_time_act": (False, False, "the time embedding without SiLU"),
    "resnet_out_scale_factor": (1.0, 1.0, "scaled residual blocks"),
    "time_embedding_type": ("positional", "positional", "Fourier time features"),
    "time_embedding_act_fn": (None, None, "an activated time embedding"),
    "timestep_post_act": (None, None, "an activated time embedding"),
    "time_cond_proj_dim": (None, None, "a guidance-scale embedding (LCM)"),
    "class_embed_type": (None, None, "a class embedding"),
    "num_class_embeds": (None, None, "a class embedding"),
    "class_embeddings_concat": (False, False, "a class embedding"),
    "addition_embed_type": (None, None, "SDXL's added text / image-size embedding"),
    "addition_time_embed_dim": (None, None, "SDXL's added image-size embedding"),
    "projection_class_embeddings_input_dim": (None, None, "SDXL's added embedding"),
    "encoder_hid_dim": (None, None, "a projection of the text states"),
    "encoder_hid_dim_type": (None, None, "a projection of the text states"),
    "transformer_layers_per_block": (1, 1, "SDXL's deeper transformers"),
    "reverse_transformer_layers_per_block": (None, None, "SDXL's deeper transformers"),
    "num_attention_heads": (None, None, "heads given as num_attention_heads"),
    "attention_type": ("default", "default", "gated (GLIGEN) attention"),
    "cross_attention_norm": (None, None, "a normalised text context"),
    "conv_in_kernel": (3, 3, "the input convolution's kernel"),
    "conv_out_kernel": (3, 3, "the output convolution's kernel"),
}


def refuse(key: str, value, meaning: str, supported=None) -> UserError:
    allowed = "" if supported is None else f"; the hand-written UNet supports only {supported!r}"
    return UserError(f"{SOURCE} config {key}={value!r} ({meaning}) is not supported{allowed}")


def one_value(config: dict, key: str, default, meaning: str):
    """An int setting diffusers also takes per level (a list): one value, or all levels equal."""
    value = config.get(key, default)
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise refuse(key, value, meaning + " differing by level")
        return value[0]
    return value


def heads(config: dict, widths: list) -> dict:
    """`num_heads` / `head_dim` kwargs from diffusers' `attention_head_dim`, which for this class counts HEADS (a
    historical misnaming diffusers keeps): 8 = 8 heads at every width (SD 1.x); [5, 10, 20, 20] = 64 channels a head
    (SD 2.x)."""
    counts = config.get("attention_head_dim", 8)
    counts = list(counts) if isinstance(counts, (list, tuple)) else [counts] * len(widths)
    if len(counts) != len(widths) or any(width % count for width, count in zip(widths, counts)):
        raise refuse("attention_head_dim", config.get("attention_head_dim"), f"heads at widths {widths}")
    if len(set(counts)) == 1:
        return {"num_heads": counts[0], "head_dim": None}
    head_widths = {width // count for width, count in zip(widths, counts)}
    if len(head_widths) != 1:
        raise refuse("attention_head_dim", counts, "heads whose width differs by level")
    return {"num_heads": None, "head_dim": head_widths.pop()}


def block_levels(config: dict, levels: int) -> list[int]:
    """The levels with transformers, from down_block_types and up_block_types (which must mirror each other)."""
    down = list(config.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)))
    up = list(config.get("up_block_types", ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3))
    known_down, known_up = {"DownBlock2D", "CrossAttnDownBlock2D"}, {"UpBlock2D", "CrossAttnUpBlock2D"}
    if set(down) - known_down or set(up) - known_up or len(down) != levels or len(up) != levels:
        raise UserError(f"{SOURCE} config down_block_types={down} up_block_types={up}: supported are one "
                        f"(CrossAttn)DownBlock2D and one (CrossAttn)UpBlock2D per width")
    attention_levels = [level for level, kind in enumerate(down) if kind.startswith("CrossAttn")]
    if attention_levels != [level for level, kind in enumerate(reversed(up)) if kind.startswith("CrossAttn")]:
        raise UserError(f"{SOURCE} config: transformers in down_block_types={down} and up_block_types={up} must be "
                        f"at the same levels")
    return attention_levels


def network_config(config: dict) -> dict:
    """A UNet2DConditionModel config.json (as a dict) -> `models.unet.UNet` keyword arguments, with `_target_`.

    Refuses, in one line naming it, any setting the hand-written UNet cannot reproduce (SDXL's added embeddings and
    deeper transformers among them)."""
    for key, (default, supported, meaning) in FIXED.items():
        value = config.get(key, default)
        if key == "transformer_layers_per_block":
            value = one_value(config, key, default, meaning)
        if value != supported:
            raise refuse(key, config.get(key), meaning, supported)
    widths = list(config.get("block_out_channels", (320, 640, 1280, 1280)))
    base, groups = widths[0], config.get("norm_num_groups", 32)
    if groups is None or any(width % base for width in widths) or any(width % groups for width in widths):
        raise UserError(f"{SOURCE} config block_out_channels={widths}: every width must be a multiple of the first "
                        f"and of norm_num_groups={groups}")
    time_dim = config.get("time_embedding_dim")
    # upcast_attention (SD 2.1) is read as it is: it only changes half-precision attention scores, which
    # scaled_dot_product_attention's fused kernels accumulate in float32 anyway
    return {
        "_target_": "models.unet.UNet",
        "in_channels": config.get("in_channels", 4),
        "out_channels": config.get("out_channels", 4),
        "base_channels": base,
        "channel_mult": [width // base for width in widths],
        "num_res_blocks": one_value(config, "layers_per_block", 2, "residual blocks"),
        "attention_levels": block_levels(config, len(widths)),
        **heads(config, widths),
        "dropout": config.get("dropout", 0.0),
        "context_dim": one_value(config, "cross_attention_dim", 1280, "text widths"),
        "scale_shift": False,  # the time embedding is added (resnet_time_scale_shift "default")
        "norm_groups": groups,
        "norm_eps": config.get("norm_eps", 1e-5),
        "emb_dim": None if time_dim in (None, 4 * base) else time_dim,
        "time_sin_first": not config.get("flip_sin_to_cos", True),
        "time_frequency_shift": config.get("freq_shift", 0),
        "downsample_padding": config.get("downsample_padding", 1),
        "linear_projection": bool(config.get("use_linear_projection", False)),
    }
