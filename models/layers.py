"""Building blocks of the UNet and the autoencoder, in plain PyTorch + einops.

Shapes: images are [B, C, H, W]; token sequences [B, L, D]; a key padding mask is [B, L] bool with
True for real tokens. Attention goes through `F.scaled_dot_product_attention`, which picks the
flash / memory-efficient kernels on CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def cond_field(cond, name: str):
    """Read an optional conditioning field from a dict, a dataclass, or None."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return cond.get(name)
    return getattr(cond, name, None)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that its residual branch starts as the identity (Ho et al. 2020's
    output layer; Rombach et al.'s proj_out)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def group_norm(channels: int, max_groups: int = 32, eps: float | None = None) -> nn.GroupNorm:
    """GroupNorm with 32 groups where the channels allow it (Wu & He 2018), fewer for small widths. At
    widths <= 32 that is one channel per group (instance norm); `max_groups=8` keeps >= 2 channels a group.
    `eps=None`: 1e-6 where the groups divide the width, else 1e-5 (SD's resnets give 1e-5 explicitly)."""
    groups = math.gcd(max_groups, channels)
    return nn.GroupNorm(groups, channels, eps=eps if eps is not None else 1e-6 if groups == max_groups else 1e-5)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, sin_first: bool = False,
                       frequency_shift: float = 0.0) -> torch.Tensor:
    """Transformer sinusoids of the (integer or real) timestep (Vaswani et al. 2017; Ho et al. 2020): [B] -> [B, dim].

    Frequency i of dim/2 is max_period^(-i / (dim/2 - frequency_shift)), laid out as [cos, sin]. Ho et al.'s own code
    (and so the DDPM CIFAR-10 weights) uses [sin, cos] with shift 1 (`sin_first`, `frequency_shift=1`)."""
    half = dim // 2
    steps = torch.arange(half, device=t.device, dtype=torch.float32)
    exponents = -math.log(max_period) * steps / (half - frequency_shift)
    angles = t.float()[:, None] * torch.exp(exponents)[None]  # (B, half)
    pair = (torch.sin(angles), torch.cos(angles)) if sin_first else (torch.cos(angles), torch.sin(angles))
    return F.pad(torch.cat(pair, dim=-1), (0, dim % 2))


# per-example scalars a network may take besides t, through the same path: MeanFlow's second time r (Geng et al.
# 2025) and iMF's guidance scale w (Geng et al. 2025-12, section 5: guidance as a conditioning input)
EXTRA_TIME_INPUTS = ("r", "guidance")
GUIDANCE_UNITS = 100.0  # w - 1 in [0, ~10] spread over the sinusoids the way t's [0, 1000) is


class ExtraTimeEmbedding(nn.Module):
    """Sinusoids -> MLP of each named `cond` field, summed: added to the time embedding (off unless named).

    `r` is embedded as the interval t - r (both in the network's time units): MF Table 1c finds (t, t - r) the best
    of the equivalent pairs; `guidance` as GUIDANCE_UNITS * (w - 1), so w = 1 (no guidance) embeds like t = 0."""

    def __init__(self, names, frequency_dim: int, emb_dim: int, frequency_shift: float = 0.0):
        super().__init__()
        unknown = [name for name in names if name not in EXTRA_TIME_INPUTS]
        if unknown:
            raise ValueError(f"extra_time_inputs {unknown} unknown; use any of: {', '.join(EXTRA_TIME_INPUTS)}")
        self.names, self.frequency_dim, self.frequency_shift = tuple(names), frequency_dim, frequency_shift
        self.embed = nn.ModuleDict({name: nn.Sequential(nn.Linear(frequency_dim, emb_dim), nn.SiLU(),
                                                        nn.Linear(emb_dim, emb_dim)) for name in self.names})

    def forward(self, t: torch.Tensor, cond, dtype) -> torch.Tensor:  # t: [B] -> [B, emb_dim]
        total = 0.0
        for name in self.names:
            value = cond_field(cond, name)
            if value is None:
                raise ValueError(f"this network takes `{name}` (model.extra_time_inputs): pass cond with `{name}` [B]")
            value = torch.as_tensor(value, device=t.device).expand(t.shape[0])
            value = t - value if name == "r" else GUIDANCE_UNITS * (value - 1)
            sinusoids = timestep_embedding(value, self.frequency_dim, frequency_shift=self.frequency_shift)
            total = total + self.embed[name](sinusoids.to(dtype))
        return total


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> (+ time/class embedding) -> GroupNorm -> SiLU -> dropout -> conv, plus a skip.

    With `scale_shift` the embedding modulates the second normalisation as FiLM, h = norm(h) * (1 + scale) + shift
    (Dhariwal & Nichol 2021); without it the embedding is added, as in Ho et al. 2020. `emb_dim=None` gives
    the unconditional block the autoencoder uses. `norm_eps`: both GroupNorms' eps (None: `group_norm`'s rule).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int | None = None, dropout: float = 0.0,
                 scale_shift: bool = True, norm_groups: int = 32, norm_eps: float | None = None):
        super().__init__()
        self.scale_shift = scale_shift and emb_dim is not None
        self.norm1 = group_norm(in_channels, norm_groups, norm_eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = None if emb_dim is None else nn.Linear(emb_dim, out_channels * (2 if self.scale_shift else 1))
        self.norm2 = group_norm(out_channels, norm_groups, norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None:
            e = self.emb(F.silu(emb))[:, :, None, None]  # (B, C or 2C, 1, 1)
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)
                h = torch.addcmul(shift, self.norm2(h), 1 + scale)  # norm(h) * (1 + scale) + shift in one pass
            else:
                h = self.norm2(h + e)
        else:
            h = self.norm2(h)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W with a strided 3x3 convolution (Ho et al. 2020).

    `padding=1` pads one pixel on every side; `padding=0` pads one row and column at the bottom and right only,
    TensorFlow's "SAME" for a stride-2 convolution, which Ho et al.'s code and the LDM / SD autoencoder use."""

    def __init__(self, channels: int, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"downsample padding must be 1 (every side) or 0 (bottom and right only), got {padding}")
        self.pad_bottom_right = padding == 0
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_bottom_right:
            x = F.pad(x, (0, 1, 0, 1))  # (left, right, top, bottom)
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour, then a 3x3 convolution (avoids checkerboard artefacts; Odena et al. 2016)."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def attention(q, k, v, heads: int, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head scaled dot-product attention on [B, N, heads*d] inputs; key_mask [B, L] is True for keys to keep."""
    q, k, v = (rearrange(x, "b n (h d) -> b h n d", h=heads) for x in (q, k, v))
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L) broadcast over heads and queries
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return rearrange(out, "b h n d -> b n (h d)")


class Attention(nn.Module):
    """Self-attention (context=None) or cross-attention to `context` [B, L, context_dim]."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.record_maps = False  # set by `diffusion.tools.inspection` to keep the attention probabilities
        self.last_maps = None

    def forward(self, x, context=None, context_mask=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        if self.record_maps:
            self.last_maps = attention_probabilities(q, k, self.heads, context_mask)
        return self.to_out(attention(q, k, v, self.heads, context_mask))


def attention_probabilities(q, k, heads: int, key_mask=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) averaged over heads: [B, N, L] (for inspection; the forward pass uses SDPA)."""
    q, k = (rearrange(x, "b n (h d) -> b h n d", h=heads) for x in (q, k))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return scores.softmax(dim=-1).mean(dim=1).detach()


class FusedAttention(nn.Module):
    """Multi-head attention with biased q and fused k/v projections (the DiT's); self-attention when `context` is None, else queries from h, keys/values from context."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, h, context=None, context_mask=None):
        batch, length, dim = h.shape
        source = h if context is None else context
        q = self.q(h).view(batch, length, self.heads, -1).transpose(1, 2)
        k, v = self.kv(source).view(batch, source.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if context_mask is None else context_mask[:, None, None, :].bool()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class FeedForward(nn.Module):
    """GEGLU MLP (Shazeer 2020), as in latent diffusion's transformer blocks."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * mult * 2)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(dim * mult, dim)

    def forward(self, x):
        h, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.dropout(h * F.gelu(gate)))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention -> cross-attention -> MLP, each a residual (Rombach et al. 2022, section 3.3).
    `cross_only`: the cross-attention alone, for high resolutions where self-attention over H*W positions and
    the MLP cost most of the block."""

    def __init__(self, dim: int, heads: int, context_dim: int, dropout: float = 0.0, cross_only: bool = False,
                 ff_mult: int = 4):
        super().__init__()
        self.cross_only = cross_only
        if not cross_only:
            self.norm1, self.self_attn = nn.LayerNorm(dim), Attention(dim, heads)
            self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim, ff_mult, dropout)
        self.norm2, self.cross_attn = nn.LayerNorm(dim), Attention(dim, heads, context_dim)

    def forward(self, x, context, context_mask=None):  # x: (B, N, D) with N = H * W
        if self.cross_only:
            return x + self.cross_attn(self.norm2(x), context, context_mask)
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Image features attend to themselves and to text: GroupNorm -> 1x1 in -> TransformerBlock -> 1x1 out (zero) + x.

    `linear_projection`: proj_in / proj_out are linear layers over the H*W tokens (SD 2.x, diffusers'
    `use_linear_projection`) instead of 1x1 convolutions (SD 1.x); the same map, stored as [C, C] not [C, C, 1, 1]."""

    def __init__(self, channels: int, heads: int, context_dim: int, dropout: float = 0.0, norm_groups: int = 32,
                 cross_only: bool = False, ff_mult: int = 4, linear_projection: bool = False):
        super().__init__()
        self.linear_projection = linear_projection
        projection = nn.Linear if linear_projection else lambda c_in, c_out: nn.Conv2d(c_in, c_out, 1)
        self.norm = group_norm(channels, norm_groups)
        self.proj_in = projection(channels, channels)
        self.block = TransformerBlock(channels, heads, context_dim, dropout, cross_only, ff_mult)
        self.proj_out = zero_init(projection(channels, channels))

    def forward(self, x, context, context_mask=None):
        _, _, height, width = x.shape
        h = self.norm(x)
        if self.linear_projection:
            h = self.proj_in(rearrange(h, "b c y x -> b (y x) c"))  # (B, H*W, C)
            h = self.proj_out(self.block(h, context, context_mask))
            return x + rearrange(h, "b (y x) c -> b c y x", y=height, x=width)
        h = rearrange(self.proj_in(h), "b c y x -> b (y x) c")  # (B, H*W, C)
        h = self.block(h, context, context_mask)
        h = rearrange(h, "b (y x) c -> b c y x", y=height, x=width)
        return x + self.proj_out(h)


class SelfAttention2d(nn.Module):
    """The attention block of Ho et al. 2020 for unconditional and class-conditional networks:
    GroupNorm -> q, k, v (1x1) -> attention over the H*W positions -> 1x1 out (zero) + x."""

    def __init__(self, channels: int, heads: int = 1, norm_groups: int = 32):
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.proj_out = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x, context=None, context_mask=None):
        _, _, height, width = x.shape
        q, k, v = rearrange(self.qkv(self.norm(x)), "b c y x -> b (y x) c").chunk(3, dim=-1)
        h = rearrange(attention(q, k, v, self.heads), "b (y x) c -> b c y x", y=height, x=width)
        return x + self.proj_out(h)
