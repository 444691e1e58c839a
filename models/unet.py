"""The denoiser: a UNet over images or latents (Ronneberger et al. 2015; Ho et al. 2020; Rombach et al. 2022).

Called as `model(x_t, t, cond)`, where `cond` is a mapping or an object with optional fields
`context` [B, L, context_dim] (token states to cross-attend to), `context_mask` [B, L] (True for real
tokens), `pooled` [B, pooled_dim] (a sentence vector added to the time embedding), `token_ids` [B, L]
(the prompt's tokens, for the bag of words) and `class_labels` [B] (int). The same class is unconditional
(none of them), class-conditional (`num_classes`) or text-conditional (`context_dim`).

What reaches every residual block is one embedding, emb = time + class + pooled text + bag of words:
with `vocab_size` every token of the prompt has a learned vector of its own (a class embedding per word),
pooled as sum / sqrt(number of words), so a word like "left" reaches every block from the first step,
while cross-attention decides which word belongs where.

Shape walk for unet_tiny at 32x32 (base 16, mult 1-2-2, transformer blocks at 16x16, 8x8 and the middle):
    x (B,3,32,32) -> conv_in (B,16,32,32) -> level 0 (B,16,32,32) -> down (B,16,16,16)
    -> level 1 + attention (B,32,16,16) -> down (B,32,8,8) -> level 2 + attention (B,32,8,8) -> middle (B,32,8,8)
    -> up path mirrored with skips (attention at 8x8 and 16x16) -> out (B,3,32,32)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.layers import (Downsample, ExtraTimeEmbedding, ResBlock, cond_field, SelfAttention2d, SpatialTransformer,
                           Upsample, group_norm, timestep_embedding, zero_init)

WORD_POOLINGS = ("sum", "rms", "mean")


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,  # 3 for pixels, the autoencoder's latent channels for latents
        out_channels: int | None = None,  # defaults to in_channels (epsilon, v and x0 all have the input's shape)
        base_channels: int = 64,  # width of the first level
        channel_mult: tuple = (1, 2, 2),  # width of level i = base_channels * channel_mult[i]
        num_res_blocks: int = 2,  # residual blocks per level on the way down (one more on the way up)
        attention_levels: tuple = (1, 2),  # levels (0 = full resolution) with attention; the middle always has it
        cross_attention_levels: tuple = (),  # levels with cross-attention to the text only (no self-attention / MLP)
        ff_mult: int = 4,  # hidden width of the transformer blocks' MLP, in multiples of the block width
        num_heads: int | None = None,  # attention heads; or give head_dim instead
        head_dim: int | None = 32,  # channels per head (heads = width // head_dim) when num_heads is None
        dropout: float = 0.0,
        context_dim: int | None = None,  # width of the text states; None: no cross-attention
        pooled_dim: int | None = None,  # width of a pooled text vector added to the time embedding
        num_classes: int | None = None,  # class-conditional when set
        vocab_size: int | None = None,  # a bag of words: one learned vector per token added to the time embedding
        word_pooling: str = "rms",  # how the prompt's word vectors combine: sum | rms (sum / sqrt(n)) | mean
        word_init_std: float = 1.0,  # initial scale of the word vectors (a class embedding's is 1)
        bigram_buckets: int = 0,  # > 0: word pairs too, hashed into this many vectors (fastText; Joulin et al. 2017)
        scale_shift: bool = True,  # FiLM time conditioning (Dhariwal & Nichol 2021); False = additive (Ho et al.)
        norm_groups: int = 32,  # GroupNorm groups (at most; gcd with the width): 32 makes widths <= 32 instance norm
        emb_dim: int | None = None,  # width of the time (+ text / class) embedding; None: 4 * base_channels
        gradient_checkpointing: bool = False,  # recompute block activations in backward to save memory
        time_sin_first: bool = False,  # timestep sinusoids as [sin, cos] (Ho et al.'s code) instead of [cos, sin]
        time_frequency_shift: float = 0.0,  # frequencies 10000^(-i / (half - shift)): 1 in Ho et al.'s code
        downsample_padding: int = 1,  # 1: pad every side; 0: bottom / right only (TF "SAME", Ho et al.'s code)
        norm_eps: float | None = None,  # resnets' and the output's GroupNorm eps: SD's 1e-5; None: 1e-6 (group_norm)
        linear_projection: bool = False,  # transformers' proj_in / proj_out as linear layers (SD 2.x), not 1x1 convs
        extra_time_inputs: tuple = (),  # cond fields embedded like t and added to it: r (MeanFlow), guidance (iMF)
    ):
        super().__init__()
        if word_pooling not in WORD_POOLINGS:
            raise ValueError(f"unknown word_pooling {word_pooling!r}; use one of: {', '.join(WORD_POOLINGS)}")
        out_channels = out_channels or in_channels
        channel_mult = tuple(channel_mult)
        attention_levels, cross_attention_levels = tuple(attention_levels), tuple(cross_attention_levels)
        for name, levels in (("attention_levels", attention_levels), ("cross_attention_levels", cross_attention_levels)):
            if any(not 0 <= level < len(channel_mult) for level in levels):
                raise ValueError(f"{name} {levels} must be in [0, {len(channel_mult)})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.downsampling = 2 ** (len(channel_mult) - 1)
        self.context_dim = context_dim
        self.gradient_checkpointing = gradient_checkpointing
        self.time_sin_first, self.time_frequency_shift = time_sin_first, time_frequency_shift
        emb_dim = emb_dim or base_channels * 4

        self.time_embed = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.extra_time_inputs = tuple(extra_time_inputs)
        self.extra_time_embed = (ExtraTimeEmbedding(self.extra_time_inputs, base_channels, emb_dim, time_frequency_shift)
                                 if self.extra_time_inputs else None)
        self.class_embed = nn.Embedding(num_classes, emb_dim) if num_classes else None
        # the bag of words: a vector per token (and per hashed word pair), like a class embedding per word
        self.word_embed = word_table(vocab_size, emb_dim, word_init_std) if vocab_size else None
        self.bigram_embed = word_table(bigram_buckets, emb_dim, word_init_std) if vocab_size and bigram_buckets else None
        self.word_pooling = word_pooling
        self.pooled_embed = (nn.Sequential(nn.Linear(pooled_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
                             if pooled_dim else None)

        def heads_for(width: int) -> int:
            return num_heads or max(1, width // head_dim)

        def attention_block(width: int) -> nn.Module:
            if context_dim is None:
                return SelfAttention2d(width, heads_for(width), norm_groups)
            return SpatialTransformer(width, heads_for(width), context_dim, dropout, norm_groups, ff_mult=ff_mult,
                                      linear_projection=linear_projection)

        def level_attention(level: int, width: int) -> nn.Module | None:
            if level in attention_levels:
                return attention_block(width)
            if level in cross_attention_levels and context_dim is not None:
                return SpatialTransformer(width, heads_for(width), context_dim, dropout, norm_groups, cross_only=True,
                                          linear_projection=linear_projection)
            return None

        def res_block(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, emb_dim, dropout, scale_shift, norm_groups, norm_eps)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Down path: every block's output is kept as a skip for the up path.
        self.down = nn.ModuleList()
        widths = [base_channels * m for m in channel_mult]
        skip_widths, width = [base_channels], base_channels
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(UNetStage(res_block(width, level_width), level_attention(level, level_width)))
                width = level_width
                skip_widths.append(width)
            if level < len(widths) - 1:
                self.down.append(UNetStage(Downsample(width, padding=downsample_padding)))
                skip_widths.append(width)

        self.middle = nn.ModuleList([UNetStage(res_block(width, width), attention_block(width)),
                                     UNetStage(res_block(width, width))])

        # Up path: num_res_blocks + 1 blocks per level, each eating one skip.
        self.up = nn.ModuleList()
        for level, level_width in reversed(list(enumerate(widths))):
            for block in range(num_res_blocks + 1):
                self.up.append(UNetStage(res_block(width + skip_widths.pop(), level_width),
                                         level_attention(level, level_width),
                                         Upsample(level_width) if level > 0 and block == num_res_blocks else None))
                width = level_width

        self.norm_out = group_norm(width, norm_groups, norm_eps)
        self.conv_out = zero_init(nn.Conv2d(width, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        batch, _, height, width = x.shape
        if height % self.downsampling or width % self.downsampling:
            raise ValueError(f"input {height}x{width} is not divisible by the UNet's total downsampling "
                             f"{self.downsampling}; use a resolution that is a multiple of {self.downsampling}")
        # a Python timestep is filled in on the device (as_tensor would copy it from the host: a sync per step)
        t = torch.full((), t, device=x.device) if isinstance(t, (int, float)) else torch.as_tensor(t, device=x.device)
        t = t.expand(batch) if t.ndim == 0 else t
        sinusoids = timestep_embedding(t, self.time_embed[0].in_features, sin_first=self.time_sin_first,
                                       frequency_shift=self.time_frequency_shift)
        emb = self.time_embed(sinusoids.to(x.dtype))
        if self.extra_time_embed is not None:
            emb = emb + self.extra_time_embed(t, cond, x.dtype)
        if self.class_embed is not None:
            emb = emb + self.class_embed(cond_field(cond, "class_labels"))
        if self.pooled_embed is not None:
            emb = emb + self.pooled_embed(cond_field(cond, "pooled"))
        if self.word_embed is not None:
            token_ids = cond_field(cond, "token_ids")
            if token_ids is None:
                raise ValueError("this UNet adds word vectors (vocab_size): pass cond with `token_ids` [B, L] and "
                                 "`context_mask` [B, L]")
            emb = emb + self.bag_of_words(token_ids, cond_field(cond, "context_mask"))
        context, context_mask = cond_field(cond, "context"), cond_field(cond, "context_mask")
        if self.context_dim is not None and context is None:
            raise ValueError("this UNet is text-conditional: pass cond with `context` [B, L, context_dim]")

        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, emb, context, context_mask)
            skips.append(h)
        for stage in self.middle:
            h = self._run(stage, h, emb, context, context_mask)
        for stage in self.up:
            h = torch.cat([h, skips.pop()], dim=1)  # rebound first, so the un-joined h is freed before the stage runs
            h = self._run(stage, h, emb, context, context_mask)
        return self.conv_out(torch.nn.functional.silu(self.norm_out(h)))

    def bag_of_words(self, token_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The prompt's word vectors combined: [B, L] ids, [B, L] mask -> [B, emb_dim]."""
        weights = mask.to(self.word_embed.weight.dtype)[..., None]  # (B, L, 1)
        bag = self.pool_words(self.word_embed(token_ids), weights)  # (B, emb_dim)
        if self.bigram_embed is not None:  # the pair (a, b) -> bucket (a * P + b) mod buckets, P a large prime
            pairs = (token_ids[:, :-1] * 1_000_003 + token_ids[:, 1:]) % self.bigram_embed.num_embeddings  # (B, L-1)
            bag = bag + self.pool_words(self.bigram_embed(pairs), weights[:, :-1] * weights[:, 1:])
        return bag

    def pool_words(self, vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(B, L, D) vectors, (B, L, 1) 0/1 weights -> (B, D): their sum, sum / sqrt(n) or mean."""
        total = (vectors * weights).sum(1)
        count = weights.sum(1).clamp(min=1)  # (B, 1)
        if self.word_pooling == "rms":
            return total / count.sqrt()
        if self.word_pooling == "mean":
            return total / count
        return total

    def _run(self, stage, h, emb, context, context_mask):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, h, emb, context, context_mask, use_reentrant=False)
        return stage(h, emb, context, context_mask)


def word_table(rows: int, width: int, init_std: float) -> nn.Embedding:
    table = nn.Embedding(rows, width)
    nn.init.normal_(table.weight, std=init_std)
    return table


class UNetStage(nn.Module):
    """One step of the UNet: a residual block or a resampler, then optional attention and upsampling."""

    def __init__(self, block: nn.Module, attention: nn.Module | None = None, upsample: nn.Module | None = None):
        super().__init__()
        self.block, self.attention, self.upsample = block, attention, upsample

    def forward(self, h, emb, context=None, context_mask=None):
        h = self.block(h, emb) if isinstance(self.block, ResBlock) else self.block(h)
        if self.attention is not None:
            h = self.attention(h, context, context_mask)
        if self.upsample is not None:
            h = self.upsample(h)
        return h
