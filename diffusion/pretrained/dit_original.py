"""facebookresearch/DiT's own checkpoints (`DiT-XL-2-256x256.pt`: a plain state dict) -> `models.dit.DiT`.

    from diffusion.pretrained import dit_original
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    kwargs = dit_original.network_config(state_dict)        # read from the tensors' shapes: the file has no config
    ours = dit_original.to_ours(state_dict)

Where each published tensor lands (block n):

    facebookresearch/DiT                         models.dit.DiT
    x_embedder.proj                              patchify
    pos_embed                                    (dropped: the fixed 2-D sin-cos table, which our DiT computes)
    t_embedder.mlp.0 / mlp.2                     time_embed.0 / time_embed.2
    y_embedder.embedding_table                   class_embed        (1000 classes + the "no class" row)
    blocks.n.attn.qkv                            blocks.n.attn.q + blocks.n.attn.kv   (rows 1/3 and 2/3)
    blocks.n.attn.proj                           blocks.n.attn.proj
    blocks.n.mlp.fc1 / mlp.fc2                   blocks.n.mlp.0 / blocks.n.mlp.2
    blocks.n.adaLN_modulation.1                  blocks.n.ada_ln.1
    final_layer.adaLN_modulation.1               ada_out.1
    final_layer.linear                           out

The original code's timestep sinusoids are [cos, sin] with frequencies 10000^(-i / 128) (our default) and its
position table encodes the column in the first half (`position_columns_first`).
"""

from __future__ import annotations

from diffusion.errors import UserError
from diffusion.pretrained.table import WHOLE, convert, indices, row

SOURCE = "facebookresearch/DiT checkpoint"

BLOCK = [  # the original DiTBlock -> models.dit.DiTBlock
    row("attn.qkv", ("attn.q", "attn.kv"), parts=((1,), (1, 2))),  # timm's fused q, k, v: our q, then k and v
    row("attn.proj", "attn.proj"),
    row("mlp.fc1", "mlp.0"),
    row("mlp.fc2", "mlp.2"),
    row("adaLN_modulation.1", "ada_ln.1"),
]

# the width of each published DiT (Peebles & Xie 2023, Table 1) -> its heads: the file stores no head count
HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}  # DiT-S, -B, -L, -XL


def key_table(depth: int) -> list:
    """(published module, our module, rows) for an original DiT of `depth` blocks."""
    return [("x_embedder.proj", "patchify", WHOLE),
            ("t_embedder.mlp.0", "time_embed.0", WHOLE), ("t_embedder.mlp.2", "time_embed.2", WHOLE),
            ("y_embedder.embedding_table", "class_embed", WHOLE),
            *((f"blocks.{n}", f"blocks.{n}", BLOCK) for n in range(depth)),
            ("final_layer.adaLN_modulation.1", "ada_out.1", WHOLE), ("final_layer.linear", "out", WHOLE)]


def to_ours(state_dict: dict) -> dict:
    """An original DiT state dict -> one `models.dit.DiT` loads with strict=True (`pos_embed` dropped)."""
    depth = len(indices(state_dict, "blocks."))
    if not depth or "x_embedder.proj.weight" not in state_dict:
        raise UserError(f"{SOURCE}: no x_embedder / blocks.N keys; this is not a facebookresearch/DiT state dict")
    state_dict = {key: tensor for key, tensor in state_dict.items() if key != "pos_embed"}
    return convert(key_table(depth), state_dict, SOURCE, to_ours=True)


def from_ours(state_dict: dict) -> dict:
    """Our DiT's state dict -> the original layout, without `pos_embed` (the original code builds it from the image
    size; add `models.dit.sincos_2d(grid, grid, width, columns_first=True)[None]` for its strict loading)."""
    return convert(key_table(len(indices(state_dict, "blocks."))), state_dict, "our DiT", to_ours=False)


def network_config(state_dict: dict, num_heads: int | None = None) -> dict:
    """`models.dit.DiT` keyword arguments (with `_target_`) read from an original DiT state dict's shapes.
    The head count is not stored: it is the published model's for its width, or `num_heads`."""
    try:
        patchify = state_dict["x_embedder.proj.weight"]  # (D, C, p, p)
        hidden_size, in_channels, patch_size = patchify.shape[0], patchify.shape[1], patchify.shape[2]
        out_features = state_dict["final_layer.linear.weight"].shape[0]  # p * p * out channels
        mlp_width = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
        classes = state_dict["y_embedder.embedding_table.weight"].shape[0]
    except KeyError as missing:
        raise UserError(f"{SOURCE}: no {missing} tensor; this is not a facebookresearch/DiT state dict") from None
    num_heads = num_heads or HEADS.get(hidden_size)
    if num_heads is None:
        raise UserError(f"{SOURCE}: width {hidden_size} is none of the published DiTs' ({sorted(HEADS)}); "
                        f"give num_heads")
    return {
        "_target_": "models.dit.DiT",
        "in_channels": in_channels,
        "out_channels": out_features // (patch_size * patch_size),  # 2 x in: learned variance (learn_sigma)
        "patch_size": patch_size,
        "hidden_size": hidden_size,
        "depth": len(indices(state_dict, "blocks.")),
        "num_heads": num_heads,
        "mlp_ratio": mlp_width / hidden_size,
        "num_classes": classes,  # the table's last row is "no class" (classifier-free guidance)
        "text_conditional": False,
        "time_frequency_shift": 0,  # frequencies 10000^(-i / 128), [cos, sin]
        "mlp_norm_eps": 1e-6,
        "position_columns_first": True,
    }


def image_grid(state_dict: dict) -> int | None:
    """The patch grid side the checkpoint was trained at (16 for DiT-XL-2-256: 256 px / 8 / 2), from `pos_embed`."""
    positions = state_dict.get("pos_embed")
    return None if positions is None else round(positions.shape[1] ** 0.5)
