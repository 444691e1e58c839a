"""Prompt -> what the UNet attends to: a word-level tokenizer and a small pre-norm transformer encoder.

The tokenizer's vocabulary is built from the training captions and stored in checkpoints as a
plain list of strings, so a checkpoint alone can encode new prompts. Ids 0-3 are special:
<pad> <bos> <eos> <unk>. The empty prompt encodes to [<bos>, <eos>]: the unconditional input
for classifier-free guidance.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from models.layers import attention

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
PAD, BOS, EOS, UNK = range(4)
POOLINGS = ("mean", "attention", "mean_bow")
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[,.;:!?]")


def split_words(text: str) -> list[str]:
    """Lower-case words and punctuation marks: "A red bird, facing left" -> [a, red, bird, ",", facing, left]."""
    return WORD.findall(text.lower())


class Tokenizer:
    """Word-level tokenizer over a fixed vocabulary; unknown words map to <unk>."""

    def __init__(self, vocabulary: list[str], max_length: int = 64):
        if list(vocabulary[:4]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}")
        self.vocabulary = list(vocabulary)
        self.max_length = max_length  # including <bos> and <eos>
        self.index = {word: i for i, word in enumerate(self.vocabulary)}

    @classmethod
    def from_captions(cls, captions, min_count: int = 1, max_length: int = 64) -> "Tokenizer":
        """Every word seen at least `min_count` times, most frequent first (ties alphabetical)."""
        counts = Counter(word for caption in captions for word in split_words(caption))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(SPECIAL_TOKENS + words, max_length)

    def __len__(self) -> int:
        return len(self.vocabulary)

    def state_dict(self) -> dict:
        """Plain lists and ints: safe inside a `weights_only` checkpoint."""
        return {"vocabulary": list(self.vocabulary), "max_length": int(self.max_length)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Tokenizer":
        return cls(list(state["vocabulary"]), int(state["max_length"]))

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` this vocabulary lacks (each read as <unk>), in order, once each."""
        return list(dict.fromkeys(w for w in split_words(text) if w not in self.index))

    def encode_one(self, text: str) -> list[int]:
        words = split_words(text)
        room = self.max_length - 2
        if len(words) > room:
            warnings.warn(f"prompt has {len(words)} words; the text encoder reads at most {room}, "
                          f"so the last {len(words) - room} were dropped: {text[:60]!r}...", stacklevel=3)
            words = words[:room]
        return [BOS] + [self.index.get(w, UNK) for w in words] + [EOS]

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, L] padded to the longest prompt, and the mask [B, L] (True for real tokens)."""
        encoded = [self.encode_one(t) for t in texts]
        length = max(len(e) for e in encoded)
        ids = torch.full((len(texts), length), PAD, dtype=torch.long)
        for row, tokens in enumerate(encoded):
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids, ids != PAD


@dataclass
class TextEncoding:
    states: torch.Tensor  # [B, L, D] per-token states: the UNet's cross-attention context
    mask: torch.Tensor  # [B, L] True for real tokens
    pooled: torch.Tensor  # [B, D] sentence vector: mean (or attention pooling) of the real tokens' states
    ids: torch.Tensor | None = None  # [B, L] the token ids (the UNet's bag of words reads them)


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer (Xiong et al. 2020): x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask):  # x: (B, L, D), mask: (B, L)
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.dropout(self.attn_out(attention(q, k, v, self.heads, mask)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class TextEncoder(nn.Module):
    """Prompts -> per-token states, trained from scratch together with the UNet."""

    trainable = True  # trained with the UNet and stored in checkpoints (unlike a frozen pretrained encoder)

    @staticmethod
    def vocabulary_from_captions(captions, min_count: int = 1) -> list[str]:
        """The vocabulary this encoder learns from: every word seen at least `min_count` times in the captions."""
        return Tokenizer.from_captions(captions, min_count).vocabulary

    def __init__(
        self,
        vocabulary: list[str],  # filled in by code: built from the training captions, or read from a checkpoint
        width: int = 128,  # the states' width D (= the UNet's context_dim)
        depth: int = 2,  # transformer layers
        heads: int = 4,
        max_length: int = 64,  # positions, including <bos> and <eos>; longer prompts are truncated with a warning
        dropout: float = 0.0,
        pooling: str = "mean",  # the sentence vector: "mean" of the real tokens, "attention" (a learned query), or
        # "mean_bow": the mean plus a bag of words (the mean of a separate word-vector table over the prompt)
        position_init_std: float = 0.02,  # initial scale of the position embeddings (the word embeddings' is 1)
        bow_init_std: float = 1.0,  # initial scale of the bag-of-words table (pooling=mean_bow)
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown text pooling {pooling!r}; use one of: {', '.join(POOLINGS)}")
        self.tokenizer = Tokenizer(list(vocabulary), max_length)
        self.heads, self.pooling = heads, pooling
        self.width = width
        self.token_embedding = nn.Embedding(len(self.tokenizer), width)
        self.position_embedding = nn.Parameter(torch.randn(max_length, width) * position_init_std)
        self.layers = nn.ModuleList(EncoderLayer(width, heads, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        if pooling == "attention":  # pooled = softmax(q k^T / sqrt(d)) v over the real tokens, q learned
            self.pool_query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
            self.pool_kv = nn.Linear(width, 2 * width)
        if pooling == "mean_bow":  # word vectors of their own: not shaped by (or shaping) the transformer
            self.bow_embedding = nn.Embedding(len(self.tokenizer), width)
            nn.init.normal_(self.bow_embedding.weight, std=bow_init_std)

    @property
    def output_dim(self) -> int:
        return self.width

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, prompts: list[str], device=None) -> TextEncoding:
        ids, mask = self.tokenizer(list(prompts))
        # non_blocking: a plain .to(cuda) would wait for the GPU's queue (a host-device sync per training step)
        return self(ids.to(device, non_blocking=True), mask.to(device, non_blocking=True))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> TextEncoding:
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]  # (B, L, D)
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)
        return TextEncoding(states=x, mask=mask, pooled=self.pool(x, mask, ids), ids=ids)

    def pool(self, states: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.pooling == "mean":
            return masked_mean(states, mask)
        if self.pooling == "mean_bow":
            return masked_mean(states, mask) + masked_mean(self.bow_embedding(ids), mask)
        k, v = self.pool_kv(states).chunk(2, dim=-1)  # (B, L, D) each
        query = self.pool_query.expand(states.shape[0], 1, -1)  # (B, 1, D)
        return attention(query, k, v, self.heads, mask)[:, 0]  # (B, D)


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens: [B, L, D], [B, L] -> [B, D]."""
    weights = mask.to(states.dtype)[..., None]  # (B, L, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1)

