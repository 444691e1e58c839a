"""The hand-written CLIP text encoder is clip-vit-large-patch14's text model (SD 1.x's `text_encoder/`): random weights
at the published config, saved by transformers' CLIPTextModel, give its last hidden state and pooled output within
1e-4 in float32, and SD's "CLIP skip" equals diffusers' (hidden_states[-2] through the final LayerNorm); the same
tensors under the SD single file's `cond_stage_model.transformer.` prefix load too."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from diffusion.errors import UserError
from diffusion.pretrained import transformers_clip
from published import max_difference, ours, randomise

# openai/clip-vit-large-patch14's text_config (as SD 1.x's text_encoder/config.json reads)
CLIP_L_TEXT = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
# the same blocks, 64 wide, 2 deep, 4 heads
NARROW = {**CLIP_L_TEXT, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}


def published_clip(config: dict, folder):
    """Random weights saved by transformers itself, read back with the safetensors package."""
    torch.manual_seed(0)
    reference = randomise(CLIPTextModel(CLIPTextConfig(**config)))
    reference.save_pretrained(folder)
    return reference, json.loads((folder / "config.json").read_text()), load_file(folder / "model.safetensors")


def token_ids(lengths=(5, 77, 20)) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as SD's tokenizer gives them: start, words, end, then end tokens as padding to 77 (mask 0 there)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.full((len(lengths), 77), 49407)
    mask = torch.zeros(len(lengths), 77, dtype=torch.long)
    for b, length in enumerate(lengths):
        ids[b, 0] = 49406
        ids[b, 1:length - 1] = torch.randint(0, 49406, (length - 2,), generator=generator)
        mask[b, :length] = 1
    return ids, mask


def parity(config: dict, folder, attention: str = "sdpa") -> tuple[float, float]:
    """Ours vs transformers, whose attention runs through torch's SDPA (as ours does: equal to the bit) or through
    its own eager softmax(q k^T) v (rounding differs: the check that our attention is the same math)."""
    reference, published_config, weights = published_clip(config, folder)
    reference.set_attn_implementation(attention)
    network = ours(transformers_clip.network_config(published_config), transformers_clip.to_ours(weights))
    ids, mask = token_ids()
    differences = []
    with torch.no_grad():
        for attention_mask in (None, mask):  # SD 1.x passes none; a padding mask changes only the padded positions
            expected = reference(ids, attention_mask=attention_mask)
            states, pooled = network(ids, attention_mask)
            differences += [max_difference(states, expected.last_hidden_state),
                            max_difference(pooled, expected.pooler_output)]
    states_difference, pooled_difference = max(differences[0::2]), max(differences[1::2])
    print(f"CLIP text {config['num_hidden_layers']} x {config['hidden_size']}, transformers {attention} attention, "
          f"eos_token_id {config['eos_token_id']}: max |ours - transformers| "
          f"last hidden state {states_difference:.2e}, pooled {pooled_difference:.2e}")
    return states_difference, pooled_difference


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("eos_token_id", [2, 49407])
def test_narrow_clip_text_matches_transformers(tmp_path, eos_token_id, attention):
    """eos_token_id 2 (the hub's clip-vit-large-patch14 config): transformers pools at the highest id, as we do;
    49407 (configs after transformers PR #24773): at the first end token, the same position for tokenizer output."""
    assert max(parity({**NARROW, "eos_token_id": eos_token_id}, tmp_path, attention)) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_full_clip_vit_large_patch14_text_matches_transformers(tmp_path, attention):
    assert max(parity(CLIP_L_TEXT, tmp_path, attention)) <= 1e-4


@pytest.mark.parametrize("clip_skip", [2, 3])
def test_clip_skip_is_diffusers_earlier_layer_through_the_final_layer_norm(tmp_path, clip_skip):
    """Our clip_skip k = diffusers' StableDiffusionPipeline clip_skip k - 1: hidden_states[-k], final LayerNorm."""
    config = {**NARROW, "num_hidden_layers": 3}
    reference, published_config, weights = published_clip(config, tmp_path)
    network = ours(transformers_clip.network_config(published_config), transformers_clip.to_ours(weights))
    ids, _ = token_ids()
    with torch.no_grad():
        hidden = reference(ids, output_hidden_states=True).hidden_states
        expected = reference.final_layer_norm(hidden[-clip_skip])
        states, _ = network(ids, clip_skip=clip_skip)
    difference = max_difference(states, expected)
    print(f"clip_skip {clip_skip}: max |ours - diffusers' rule| = {difference:.2e}")
    assert difference <= 1e-4


def test_published_prefixes_and_the_round_trip(tmp_path):
    _, _, weights = published_clip(NARROW, tmp_path)  # transformers 5 writes no prefix
    ours_ = transformers_clip.to_ours(weights)
    hub = transformers_clip.from_ours(ours_)  # the hub's layout: text_model.*
    assert set(hub) == {f"text_model.{key}" for key in weights}
    single_file = {f"cond_stage_model.transformer.{key}": tensor for key, tensor in hub.items()}
    single_file["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    single_file["model.diffusion_model.out.0.weight"] = torch.zeros(4)  # the rest of an SD file is not read
    for layout in (hub, single_file):
        again = transformers_clip.to_ours(layout)
        assert again.keys() == ours_.keys() and all(torch.equal(again[k], ours_[k]) for k in ours_)


def test_bad_state_dict_and_config_are_one_line_errors():
    with pytest.raises(UserError, match="not a CLIP text model"):
        transformers_clip.to_ours({"model.diffusion_model.out.0.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="quick_gelu"):
        transformers_clip.network_config({**CLIP_L_TEXT, "hidden_act": "gelu"})
