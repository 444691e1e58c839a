"""DiT: a Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

Called as `model(x_t, t, cond)` like the UNet (same `cond` fields), so any objective and sampler can use it.

    x (B, C, H, W) -> patchify: a p x p, stride-p conv -> N = (H/p)(W/p) tokens of width D
                   -> + fixed 2-D sine-cosine position embedding (section 3.1)
    c = time MLP(sinusoids(t)) [+ MLP(sinusoids(t - r)) + MLP(sinusoids(w))] [+ class embedding] [+ pooled text]
        [+ bag of words]                                                                   (B, D)
    each of `depth` blocks, adaLN-Zero (section 3.1, Fig. 3): from c, a zero-initialised linear layer gives
        (shift, scale, gate) for attention and for the MLP:
        h = h + gate_a * Attn(LN(h) (1 + scale_a) + shift_a)
        [h = h + CrossAttn(LN(h), text tokens)]            text-conditional DiT (as PixArt-alpha)
        h = h + gate_m * MLP(LN(h) (1 + scale_m) + shift_m)
    final layer: adaLN (shift, scale) -> linear to p*p*C per token -> unpatchify -> (B, C, H, W)

Zero-initialised gates and output make every block start as the identity and the output start at 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.layers import ExtraTimeEmbedding, FusedAttention, cond_field, timestep_embedding


def sincos_2d(grid_h: int, grid_w: int, dim: int, columns_first: bool = False) -> torch.Tensor:
    """The fixed 2-D sine-cosine position embedding (MAE / DiT): half the channels encode the row, half
    the column, each with the 1-D transformer sinusoids. -> [grid_h * grid_w, dim]. `columns_first`: the first half
    encodes the column, as MAE's and the original DiT's code lay it out (and so their published weights expect)."""
    if dim % 4:
        raise ValueError(f"the DiT width must be divisible by 4 for the 2-D position embedding, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
                                indexing="ij")

    def one_axis(positions):
        angles = positions.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    halves = (one_axis(cols), one_axis(rows)) if columns_first else (one_axis(rows), one_axis(cols))
    return torch.cat(halves, dim=1).float()


def modulate(h, shift, scale):
    """adaLN: h (1 + scale) + shift, per sample ((B, D) broadcast over the tokens); one fused kernel."""
    return torch.addcmul(shift[:, None], h, 1 + scale[:, None])


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, context_dim: int | None = None,
                 mlp_norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = FusedAttention(dim, heads)
        self.cross = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross = FusedAttention(dim, heads, context_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=mlp_norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada_ln[1].weight)
        nn.init.zeros_(self.ada_ln[1].bias)

    def forward(self, h, c, context=None, context_mask=None):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada_ln(c).chunk(6, dim=1)
        h = h + gate_a[:, None] * self.attn(modulate(self.norm1(h), shift_a, scale_a))
        if self.cross is not None:
            h = h + self.cross(self.norm_cross(h), context, context_mask)
        return h + gate_m[:, None] * self.mlp(modulate(self.norm2(h), shift_m, scale_m))


class DiT(nn.Module):
    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int | None = None,
        patch_size: int = 2,
        hidden_size: int = 384,  # D
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        frequency_dim: int = 256,  # sinusoids fed to the time MLP
        context_dim: int | None = None,  # text states to cross-attend to (None: no cross-attention)
        pooled_dim: int | None = None,
        num_classes: int | None = None,  # class-conditional: labels 0 .. num_classes-1, the last one (or -1) "no class"
        vocab_size: int | None = None,  # a bag of words added to c, as in the UNet
        text_conditional: bool = True,  # False: a class-conditional DiT that refuses text
        time_frequency_shift: float = 0.0,  # timestep frequencies 10000^(-i / (half - shift)): diffusers' DiT uses 1
        mlp_norm_eps: float = 1e-6,  # the LayerNorm before each MLP: diffusers' DiTTransformer2DModel uses 1e-5
        position_columns_first: bool = False,  # the position table's first half encodes the column (the original DiT)
        extra_time_inputs: tuple = (),  # cond fields embedded like t and added to c: r (MeanFlow), guidance (iMF)
    ):
        super().__init__()
        if not text_conditional and (context_dim is not None or pooled_dim is not None or vocab_size is not None):
            raise ValueError("this DiT is class-conditional only (model.text_conditional=false): train it with text=none "
                             "(and diffusion.class_conditional=true), or use a text-conditional model such as model=dit_tiny")
        if hidden_size % num_heads:
            raise ValueError(f"model.hidden_size={hidden_size} must be divisible by model.num_heads={num_heads}")
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels, self.patch_size = in_channels, out_channels, patch_size
        self.downsampling = patch_size  # the input must be a multiple of this (the training loop checks it)
        self.context_dim = context_dim
        self.patchify = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.time_embed = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.extra_time_inputs = tuple(extra_time_inputs)
        self.extra_time_embed = (ExtraTimeEmbedding(self.extra_time_inputs, frequency_dim, hidden_size, time_frequency_shift)
                                 if self.extra_time_inputs else None)
        self.class_embed = nn.Embedding(num_classes, hidden_size) if num_classes else None
        self.pooled_embed = nn.Linear(pooled_dim, hidden_size) if pooled_dim else None
        self.word_embed = nn.Embedding(vocab_size, hidden_size) if vocab_size else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, context_dim, mlp_norm_eps)
                                    for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.out = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.frequency_dim, self.time_frequency_shift = frequency_dim, time_frequency_shift
        self.position_columns_first = position_columns_first
        self._init_weights()

    def _init_weights(self):
        for module in self.modules():  # DiT: Xavier-uniform linear layers, zero biases
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patchify.weight.view(self.patchify.weight.shape[0], -1))
        nn.init.normal_(self.time_embed[0].weight, std=0.02)
        nn.init.normal_(self.time_embed[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.ada_ln[1].weight)
            nn.init.zeros_(block.ada_ln[1].bias)
        for layer in (self.ada_out[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t, cond=None) -> torch.Tensor:
        batch, _, height, width = x.shape
        p = self.patch_size
        check_patch_grid(height, width, p, "DiT")
        c = condition_embedding(self, x, t, cond)  # (B, D)
        context, context_mask = cond_field(cond, "context"), cond_field(cond, "context_mask")
        if self.context_dim is not None and context is None:
            raise ValueError("this DiT is text-conditional: pass cond with `context` [B, L, context_dim]")

        h = self.patchify(x)  # (B, D, H/p, W/p)
        grid_h, grid_w = h.shape[2:]
        positions = sincos_2d(grid_h, grid_w, h.shape[1], self.position_columns_first).to(h)  # (N, D)
        h = (h.flatten(2).transpose(1, 2) + positions).contiguous()  # (B, N, D)
        for block in self.blocks:
            h = block(h, c, context, context_mask)
        shift, scale = self.ada_out(c).chunk(2, dim=1)
        h = self.out(modulate(self.norm_out(h), shift, scale))  # (B, N, p*p*C)
        return unpatchify(h, grid_h, grid_w, p, self.out_channels)


# ---------------------------------------------------------------------------------------------- shared with MMDiT


def check_patch_grid(height: int, width: int, p: int, name: str) -> None:
    """One line for an input the patch grid cannot cover."""
    if p > height or p > width:
        raise ValueError(f"input {height}x{width} is smaller than the {name} patch size {p}; use a smaller model.patch_size")
    if height % p or width % p:
        raise ValueError(f"input {height}x{width} is not divisible by the {name} patch size {p}; use a resolution "
                         f"that is a multiple of {p}")


def condition_embedding(model: nn.Module, x: torch.Tensor, t, cond) -> torch.Tensor:
    """c = time MLP(sinusoids(t)) [+ class embedding] [+ pooled text] [+ bag of words]: (B, D). Reads the
    model's `time_embed`, `class_embed`, `pooled_embed`, `word_embed` (None where absent), `frequency_dim` and
    `time_frequency_shift` (0 where absent)."""
    batch = x.shape[0]
    t = torch.full((), t, device=x.device) if isinstance(t, (int, float)) else torch.as_tensor(t, device=x.device)
    t = t.expand(batch) if t.ndim == 0 else t
    sinusoids = timestep_embedding(t, model.frequency_dim, frequency_shift=getattr(model, "time_frequency_shift", 0.0))
    c = model.time_embed(sinusoids.to(x.dtype))
    if getattr(model, "extra_time_embed", None) is not None:  # MeanFlow's r, iMF's guidance scale (off by default)
        c = c + model.extra_time_embed(t, cond, x.dtype)
    if model.class_embed is not None:
        labels = cond_field(cond, "class_labels")
        c = c + model.class_embed(torch.where(labels < 0, model.class_embed.num_embeddings - 1, labels))
    if model.pooled_embed is not None:
        c = c + model.pooled_embed(cond_field(cond, "pooled"))
    if model.word_embed is not None:
        ids, mask = cond_field(cond, "token_ids"), cond_field(cond, "context_mask")
        weights = mask.to(c.dtype)[..., None]
        c = c + (model.word_embed(ids) * weights).sum(1) / weights.sum(1).clamp(min=1).sqrt()
    return c


def unpatchify(h: torch.Tensor, grid_h: int, grid_w: int, p: int, channels: int) -> torch.Tensor:
    """(B, N, p*p*C) tokens in row-major patch order -> (B, C, grid_h * p, grid_w * p)."""
    batch = h.shape[0]
    h = h.view(batch, grid_h, grid_w, p, p, channels)
    return h.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, grid_h * p, grid_w * p)


def dit_flops_per_image(model: DiT, channels: int, resolution: int) -> int:
    """Forward FLOPs of one image (2 per multiply-add), counted by torch's FlopCounterMode on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        x, t = torch.zeros(1, channels, resolution, resolution), torch.zeros(1)
        labels = torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(x, t, {"class_labels": labels})
    return counter.get_total_flops()


__all__ = ["DiT", "DiTBlock", "sincos_2d", "modulate", "check_patch_grid", "condition_embedding", "unpatchify",
           "dit_flops_per_image", "math"]
