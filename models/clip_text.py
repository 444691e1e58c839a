"""CLIP's text encoder (Radford et al. 2021), the frozen text model of Stable Diffusion 1.x.

A causal (GPT-style) transformer over at most 77 byte-level BPE tokens (`models.clip_tokenizer`):
token + learned position embeddings, pre-LayerNorm blocks (attention, then a quick-GELU MLP, each added back to
the residual stream), a final LayerNorm. SD 1.x conditions its UNet on the per-token states of the last layer;
CLIP's own image-text head reads one vector, the state at the end token (`pooled`).

`clip_skip` counts layers from the end as Stable Diffusion users do (1 = the last layer, 2 = the one before):
the states after layer `layers - clip_skip + 1`, put through the final LayerNorm. That is what diffusers'
StableDiffusionPipeline does (its own `clip_skip` is ours minus one: it takes `hidden_states[-(clip_skip + 1)]`
and applies `final_layer_norm`), and what the original SD web UI does.

Weights from transformers' CLIPTextModel or an SD single file: `diffusion/pretrained/transformers_clip.py`.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from models.clip_tokenizer import CLIPTokenizer
from models.text_encoder import TextEncoding


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's GELU approximation x * sigmoid(1.702 x); the weights were trained with it, so it is not erf-GELU."""
    return x * torch.sigmoid(1.702 * x)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quick_gelu(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)  # q, k, v stacked along the output (published: q_proj, k_proj, v_proj)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, head_dim)
        # each token sees itself and the tokens before it; padded keys (key_padding False) are hidden as well
        allowed = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        if key_padding is not None:
            allowed = allowed & key_padding[:, None, None, :].bool()  # (B, 1, T, T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # softmax(q k^T / sqrt(head_dim)) v
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-LayerNorm: x + attention(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, width: int, heads: int, mlp_width: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attention = CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_width), QuickGELU(), nn.Linear(mlp_width, width))

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), key_padding)
        return x + self.mlp(self.norm2(x))


class PromptTruncated(UserWarning):
    """A prompt longer than the encoder's 77 positions: the words past them were dropped."""


def check_clip_skip(clip_skip: int, layers: int) -> None:
    if not 1 <= clip_skip <= layers:
        raise ValueError(f"clip_skip={clip_skip} must be between 1 (the last layer) and {layers} (the first)")


class CLIPTextEncoder(nn.Module):
    trainable = False  # a pretrained, frozen text model, as SD uses it

    def __init__(
        self,
        vocab_size: int = 49408,  # 512 byte tokens (alone, and with </w>) + 48894 merges + start (49406) + end (49407)
        width: int = 768,         # clip-vit-large-patch14's text width (SD 1.x's cross-attention dim)
        layers: int = 12,         # transformer blocks
        heads: int = 12,          # attention heads (head width 64)
        max_length: int = 77,     # learned positions: CLIP's context length, prompts are cut to it
        mlp_width: int = 3072,    # 4 x width
        eps: float = 1e-5,        # LayerNorm epsilon (transformers' layer_norm_eps)
        clip_skip: int = 1,       # 1 = last layer's states; 2 = the layer before (SD's "CLIP skip"), ...
        tokenizer: str | None = None,  # the vocabulary (data, not weights): a folder with vocab.json + merges.txt,
                                       # or CLIP's bpe_simple_vocab_16e6.txt.gz; needed by `encode`, not `forward`
    ):
        super().__init__()
        check_clip_skip(clip_skip, layers)
        self.tokenizer = CLIPTokenizer.from_path(tokenizer, max_length=max_length) if tokenizer else None
        self.max_length = max_length
        self.width = width
        self.clip_skip = clip_skip
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_length, width)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_width, eps) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width, eps=eps)

    @property
    def output_dim(self) -> int:
        return self.width

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) with T <= max_length -> (states (B, T, width), pooled (B, width)).

        `attention_mask` (B, T), 1 for real tokens, hides padded keys (SD 1.x passes none: its padding is end
        tokens, which causal attention keeps out of every earlier position anyway). `pooled` is the final
        LayerNorm's output at the end token, found as CLIP's code finds it: the highest id in each row
        (the end token 49407 is the largest id; transformers' CLIPTextModel picks the first `eos_token_id` instead,
        the same position for tokenizer output, where the first end token closes the prompt)."""
        clip_skip = clip_skip or self.clip_skip
        check_clip_skip(clip_skip, len(self.blocks))
        if ids.shape[1] > self.max_length:
            raise ValueError(f"{ids.shape[1]} tokens, more than the encoder's {self.max_length} positions")
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)  # (B, T, width)
        for index, block in enumerate(self.blocks):
            x = block(x, attention_mask)
            if index == len(self.blocks) - clip_skip:
                states = self.final_norm(x)  # the chosen layer, normalised as the last one is
        last = states if clip_skip == 1 else self.final_norm(x)  # pooled is always the last layer's, as CLIP reads it
        end = ids.argmax(dim=-1)  # (B,) position of the end token
        pooled = last[torch.arange(ids.shape[0], device=ids.device), end]
        return states, pooled

    @torch.no_grad()
    def encode(self, prompts: list[str], device=None) -> TextEncoding:
        """Prompts -> the UNet's context as Stable Diffusion 1.x makes it: every prompt as 77 ids (start, words,
        end, then end tokens as padding), the states of layer `clip_skip` from the end for all 77 positions.
        The mask is all True: SD's UNet attends to the padding positions too, and its outputs depend on them.
        A prompt past 77 tokens is cut there, with a `PromptTruncated` warning naming the dropped words."""
        if self.tokenizer is None:
            raise ValueError("this CLIP text encoder has no tokenizer: build it with tokenizer=<vocab.json + merges.txt "
                             "folder, or bpe_simple_vocab_16e6.txt.gz>")
        for prompt in prompts:
            dropped = self.tokenizer.dropped(prompt)
            if dropped:
                warnings.warn(f"the prompt {prompt[:40]!r}... is longer than CLIP's {self.max_length} tokens; "
                              f"dropped: {dropped!r}", PromptTruncated, stacklevel=2)
        ids, _ = self.tokenizer(list(prompts))
        ids = torch.tensor(ids, device=device if device is not None else self.token_embedding.weight.device)
        states, pooled = self(ids)  # (B, 77, width), (B, width)
        return TextEncoding(states=states, mask=torch.ones_like(ids, dtype=torch.bool), pooled=pooled, ids=ids)
