"""transformers `CLIPTextModel` (openai/clip-vit-large-patch14; SD 1.x's `text_encoder/`) -> `models.clip_text.CLIPTextEncoder`.

    from diffusion.pretrained import transformers_clip
    kwargs = transformers_clip.network_config(json.load(open(folder / "text_encoder" / "config.json")))
    ours = transformers_clip.to_ours(safetensors.torch.load_file(folder / "text_encoder" / "model.safetensors"))

Where each published tensor lands (block n), under `text_model.`:

    transformers CLIPTextModel                         models.clip_text.CLIPTextEncoder
    embeddings.token_embedding                         token_embedding
    embeddings.position_embedding                      position_embedding
    encoder.layers.n.layer_norm1                       blocks.n.norm1
    encoder.layers.n.self_attn.q_proj + k_proj + v_proj  blocks.n.attention.qkv   (stacked)
    encoder.layers.n.self_attn.out_proj                blocks.n.attention.out
    encoder.layers.n.layer_norm2                       blocks.n.norm2
    encoder.layers.n.mlp.fc1 / mlp.fc2                 blocks.n.mlp.0 / blocks.n.mlp.2
    final_layer_norm                                   final_norm

The prefix in front of `embeddings.` / `encoder.` / `final_layer_norm` depends on who wrote the file: the hub's
files (and transformers before 5) write `text_model.`; transformers 5's `save_pretrained` writes none; the SD 1.x
single file writes `cond_stage_model.transformer.text_model.`. All three are read; `from_ours` writes `text_model.`.
Older files also hold `embeddings.position_ids` (the integers 0..76, a buffer): it is dropped, not a weight.
"""

from __future__ import annotations

from diffusion.errors import UserError
from diffusion.pretrained.table import WHOLE, convert, indices, row

SOURCE = "transformers CLIPTextModel"
PREFIXES = ("cond_stage_model.transformer.text_model.", "text_model.", "")  # SD single file, hub, transformers 5
BUFFERS = ("embeddings.position_ids",)  # stored by older transformers, computed here

BLOCK = [  # transformers CLIPEncoderLayer -> models.clip_text.Block
    row("layer_norm1", "norm1"),
    row(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "attention.qkv"),
    row("self_attn.out_proj", "attention.out"),
    row("layer_norm2", "norm2"),
    row("mlp.fc1", "mlp.0"),
    row("mlp.fc2", "mlp.2"),
]


def key_table(layers: int, prefix: str = "text_model.") -> list:
    """(published module, our module, rows) for a CLIPTextModel of `layers` blocks, its keys under `prefix`."""
    return [(f"{prefix}embeddings.token_embedding", "token_embedding", WHOLE),
            (f"{prefix}embeddings.position_embedding", "position_embedding", WHOLE),
            *((f"{prefix}encoder.layers.{n}", f"blocks.{n}", BLOCK) for n in range(layers)),
            (f"{prefix}final_layer_norm", "final_norm", WHOLE)]


def find_prefix(keys) -> str:
    """The prefix the file's text model sits under ('' for transformers 5's own files)."""
    for prefix in PREFIXES:
        if f"{prefix}embeddings.token_embedding.weight" in keys:
            return prefix
    raise UserError(f"{SOURCE}: no embeddings.token_embedding.weight (under text_model. or "
                    f"cond_stage_model.transformer.text_model.); this is not a CLIP text model state dict")


def to_ours(state_dict: dict) -> dict:
    """A CLIPTextModel (or SD 1.x single file's cond_stage_model) state dict -> one CLIPTextEncoder loads strictly.

    In a single file, only the keys under `cond_stage_model.transformer.` are read; pass the whole file."""
    prefix = find_prefix(state_dict)
    keys = {key: tensor for key, tensor in state_dict.items()
            if key.startswith(prefix) and key[len(prefix):] not in BUFFERS}
    layers = len(indices(keys, f"{prefix}encoder.layers."))
    if not layers:
        raise UserError(f"{SOURCE}: no {prefix}encoder.layers.N keys; this is not a CLIP text model state dict")
    return convert(key_table(layers, prefix), keys, SOURCE, to_ours=True)


def from_ours(state_dict: dict) -> dict:
    """Our CLIPTextEncoder's state dict -> the published layout (`text_model.` prefix, as the hub's files)."""
    return convert(key_table(len(indices(state_dict, "blocks."))), state_dict, "our CLIP text encoder", to_ours=False)


def network_config(config: dict) -> dict:
    """A CLIPTextConfig dict (`text_encoder/config.json`, or a CLIPConfig's `text_config`) -> CLIPTextEncoder kwargs.

    Refuses, in one line, an activation the hand-written encoder does not have."""
    config = config.get("text_config", config)
    activation = config.get("hidden_act", "quick_gelu")
    if activation != "quick_gelu":
        raise UserError(f"{SOURCE} config hidden_act={activation!r}: the hand-written CLIP text encoder has "
                        f"only 'quick_gelu' (CLIP's, and SD 1.x's)")
    width, heads = config.get("hidden_size", 512), config.get("num_attention_heads", 8)
    if width % heads:
        raise UserError(f"{SOURCE} config: hidden_size {width} is not a multiple of num_attention_heads {heads}")
    return {
        "_target_": "models.clip_text.CLIPTextEncoder",
        "vocab_size": config.get("vocab_size", 49408),
        "width": width,
        "layers": config.get("num_hidden_layers", 12),
        "heads": heads,
        "max_length": config.get("max_position_embeddings", 77),
        "mlp_width": config.get("intermediate_size", 2048),
        "eps": config.get("layer_norm_eps", 1e-5),
    }

