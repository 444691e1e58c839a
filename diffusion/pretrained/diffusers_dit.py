"""diffusers `DiTTransformer2DModel` (facebook/DiT-XL-2-256's `transformer/`; Peebles & Xie 2023) -> `models.dit.DiT`.

    from diffusion.pretrained import diffusers_dit
    kwargs = diffusers_dit.network_config(json.load(open(folder / "config.json")))
    ours = diffusers_dit.to_ours(safetensors.torch.load_file(folder / "diffusion_pytorch_model.safetensors"))

Where each published tensor lands (block n):

    diffusers DiTTransformer2DModel                              models.dit.DiT
    pos_embed.proj                                               patchify   (the 2-D sin-cos table is computed, not stored:
                                                                             position_columns_first, as in MAE / DiT)
    transformer_blocks.n.norm1.emb.timestep_embedder.linear_1/2  time_embed.0 / time_embed.2   (one copy in every block)
    transformer_blocks.n.norm1.emb.class_embedder.embedding_table  class_embed                 (one copy in every block)
    transformer_blocks.n.norm1.linear                            blocks.n.ada_ln.1   (shift, scale, gate x 2: same order)
    transformer_blocks.n.attn1.to_q                              blocks.n.attn.q
    transformer_blocks.n.attn1.to_k + to_v                       blocks.n.attn.kv    (stacked)
    transformer_blocks.n.attn1.to_out.0                          blocks.n.attn.proj
    transformer_blocks.n.ff.net.0.proj / ff.net.2                blocks.n.mlp.0 / blocks.n.mlp.2
    proj_out_1 / proj_out_2                                      ada_out.1 / out

diffusers keeps a copy of the timestep and class embedding in every block (its converter writes the original DiT's
one copy into each; the output layer reads block 0's). Ours holds one: the copies must be equal, and are checked.

Two details of diffusers' DiT differ from the original code, and `network_config` sets our options to match it:
its timestep frequencies are 10000^(-i / 127) (`downscale_freq_shift=1`; the original divides by 128), and the
LayerNorm before each MLP has eps `norm_eps` (1e-5 by default; the original 1e-6).
"""

from __future__ import annotations

from diffusion.errors import UserError
from diffusion.pretrained.table import WHOLE, convert, indices, row

SOURCE = "diffusers DiTTransformer2DModel"

BLOCK = [  # diffusers BasicTransformerBlock (norm_type "ada_norm_zero") -> models.dit.DiTBlock, minus the embedding
    row("norm1.linear", "ada_ln.1"),
    row("attn1.to_q", "attn.q"),
    row(("attn1.to_k", "attn1.to_v"), "attn.kv"),
    row("attn1.to_out.0", "attn.proj"),
    row("ff.net.0.proj", "mlp.0"),
    row("ff.net.2", "mlp.2"),
]

EMBEDDING = [  # diffusers CombinedTimestepLabelEmbeddings, under every block's norm1.emb
    ("timestep_embedder.linear_1", "time_embed.0"),
    ("timestep_embedder.linear_2", "time_embed.2"),
    ("class_embedder.embedding_table", "class_embed"),
]


def key_table(depth: int) -> list:
    """(published module, our module, rows) for a DiTTransformer2DModel of `depth` blocks."""
    shared = [row(tuple(f"transformer_blocks.{n}.norm1.emb.{name}" for n in range(depth)), ours, copies=True)
              for name, ours in EMBEDDING]
    return [("pos_embed.proj", "patchify", WHOLE), ("", "", shared),
            *((f"transformer_blocks.{n}", f"blocks.{n}", BLOCK) for n in range(depth)),
            ("proj_out_1", "ada_out.1", WHOLE), ("proj_out_2", "out", WHOLE)]


def to_ours(state_dict: dict) -> dict:
    """A diffusers DiT state dict -> one `models.dit.DiT` loads with strict=True."""
    depth = len(indices(state_dict, "transformer_blocks."))
    if not depth:
        raise UserError(f"{SOURCE}: no transformer_blocks.N keys; this is not a DiT state dict")
    return convert(key_table(depth), state_dict, SOURCE, to_ours=True)


def from_ours(state_dict: dict) -> dict:
    """Our DiT's state dict -> the diffusers layout (the embedding written into every block)."""
    return convert(key_table(len(indices(state_dict, "blocks."))), state_dict, "our DiT", to_ours=False)


# config keys the hand-written DiT reproduces at one value only: key -> (diffusers' default, the value it needs)
FIXED = {
    "norm_type": ("ada_norm_zero", "ada_norm_zero"),
    "activation_fn": ("gelu-approximate", "gelu-approximate"),
    "attention_bias": (True, True),
    "norm_elementwise_affine": (False, False),
    "cross_attention_dim": (None, None),
    "num_vector_embeds": (None, None),  # the hub's legacy Transformer2DModel config: set for discrete (VQ) inputs
    "upcast_attention": (False, False),  # float32 either way; kept to refuse a config that expects otherwise
}


def network_config(config: dict) -> dict:
    """A DiTTransformer2DModel (or the hub's legacy Transformer2DModel) config dict -> `models.dit.DiT` kwargs.

    Refuses, in one line, any setting the hand-written DiT cannot reproduce."""
    for key, (default, supported) in FIXED.items():
        if config.get(key, default) != supported:
            raise UserError(f"{SOURCE} config {key}={config.get(key, default)!r}: the hand-written DiT supports only "
                            f"{supported!r}")
    if config.get("patch_size") is None or config.get("num_embeds_ada_norm", 1000) is None:
        raise UserError(f"{SOURCE} config: a class-conditional DiT needs patch_size and num_embeds_ada_norm")
    heads, head_dim = config.get("num_attention_heads", 16), config.get("attention_head_dim", 72)
    in_channels = config.get("in_channels", 4)
    return {
        "_target_": "models.dit.DiT",
        "in_channels": in_channels,
        "out_channels": config.get("out_channels") or in_channels,  # 2 x in: learned variance (DiT's learn_sigma)
        "patch_size": config.get("patch_size", 2),
        "hidden_size": heads * head_dim,
        "depth": config.get("num_layers", 28),
        "num_heads": heads,
        "mlp_ratio": 4.0,
        "num_classes": config.get("num_embeds_ada_norm", 1000) + 1,  # the last row: "no class", for guidance
        "text_conditional": False,
        "time_frequency_shift": 1,
        "mlp_norm_eps": config.get("norm_eps", 1e-5),
        "position_columns_first": True,
    }
