"""MMDiT: the multimodal diffusion transformer of SD3 (Esser et al. 2024, "Scaling Rectified Flow
Transformers for High-Resolution Image Synthesis", section 4 and Fig. 2).

Called as `model(x_t, t, cond)` like the UNet and the DiT (same `cond` fields); text is not attended to
through cross-attention but joins the image tokens in one attention, each modality with its own weights.

    x (B, C, H, W) -> patchify (p x p, stride p conv) + 2-D sine-cosine positions -> image tokens x (B, N, D)
    context (B, L, D_text) -> context_embedder (linear)                         -> text tokens  y (B, L, D)
    c = time MLP(sinusoids(t)) + MLP(pooled text) [+ class embedding] [+ bag of words]        (B, D)
    each of `depth` joint blocks, with a stream s in {x, y} having its own weights:
        (shift_s1, scale_s1, gate_s1, shift_s2, scale_s2, gate_s2) = Linear_s(SiLU(c))     adaLN-Zero, per stream
        q_s, k_s, v_s = W_s^{qkv} (LN(s) (1 + scale_s1) + shift_s1)
        o = Attention([q_x; q_y], [k_x; k_y], [v_x; v_y])   one softmax over N + L keys; padding keys masked
        o_x, o_y = split(o)
        s = s + gate_s1 * W_s^o o_s
        s = s + gate_s2 * MLP_s(LN(s) (1 + scale_s2) + shift_s2)
    the last block is "context pre-only" (as SD3): the text stream only supplies keys and values, so it has
        no queries, no output projection and no MLP there, and its modulation is (shift, scale) only
    final layer (image tokens only): adaLN (shift, scale) -> linear to p*p*C per token -> unpatchify

Zero-initialised gates and output make every block start as the identity and the output start at 0.
MMDiT is text-conditional by design (text tokens are half its input); for a class-conditional or
cross-attention transformer use models.dit.DiT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import cond_field
from models.dit import check_patch_grid, condition_embedding, modulate, sincos_2d, unpatchify


class Stream(nn.Module):
    """One modality's own weights inside a joint block. `pre_only`: keys and values only (SD3's last text stream)."""

    def __init__(self, dim: int, mlp_ratio: float, pre_only: bool = False):
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, (2 if pre_only else 6) * dim))
        self.qkv = nn.Linear(dim, (2 if pre_only else 3) * dim)  # [k, v] when pre_only, else [q, k, v]
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            hidden = int(dim * mlp_ratio)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class JointBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, context_pre_only: bool = False):
        super().__init__()
        self.heads = heads
        self.image = Stream(dim, mlp_ratio)
        self.text = Stream(dim, mlp_ratio, pre_only=context_pre_only)

    def forward(self, x, y, c, key_mask=None):
        """x (B, N, D) image tokens, y (B, L, D) text tokens, c (B, D), key_mask (B, 1, 1, N + L) additive, or None."""
        batch, n, dim = x.shape
        length = y.shape[1]
        mod_x = self.image.ada_ln(c).chunk(6, dim=1)
        mod_y = self.text.ada_ln(c).chunk(2 if self.text.pre_only else 6, dim=1)
        head_dim = dim // self.heads
        qkv_x = self.image.qkv(modulate(self.image.norm1(x), mod_x[0], mod_x[1])).view(batch, n, 3, self.heads, head_dim)
        qkv_y = self.text.qkv(modulate(self.text.norm1(y), mod_y[0], mod_y[1])).view(batch, length, -1, self.heads, head_dim)
        if self.text.pre_only:  # image queries only; the text supplies keys and values
            q = qkv_x[:, :, 0]
            k, v = torch.cat([qkv_x[:, :, 1:], qkv_y], dim=1).unbind(2)  # (B, N + L, h, d) each
        else:
            q, k, v = torch.cat([qkv_x, qkv_y], dim=1).unbind(2)  # (B, N + L, h, d) each
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, h, T, d)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        o = o.transpose(1, 2).reshape(batch, q.shape[2], dim)  # (B, N [+ L], D)

        x = torch.addcmul(x, mod_x[2][:, None], self.image.proj(o[:, :n]))  # x + gate * ...
        x = torch.addcmul(x, mod_x[5][:, None], self.image.mlp(modulate(self.image.norm2(x), mod_x[3], mod_x[4])))
        if self.text.pre_only:
            return x, None
        y = torch.addcmul(y, mod_y[2][:, None], self.text.proj(o[:, n:]))
        y = torch.addcmul(y, mod_y[5][:, None], self.text.mlp(modulate(self.text.norm2(y), mod_y[3], mod_y[4])))
        return x, y


class MMDiT(nn.Module):
    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int | None = None,
        patch_size: int = 2,
        hidden_size: int = 384,  # D, both streams (SD3: caption_projection_dim = D)
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        frequency_dim: int = 256,  # sinusoids fed to the time MLP
        context_dim: int | None = None,  # width of the text encoder's token states (required)
        pooled_dim: int | None = None,  # width of the pooled prompt vector (None: not used)
        num_classes: int | None = None,  # optional class labels added to c, as in DiT (the last one means "no class")
        vocab_size: int | None = None,  # a bag of words added to c, as in the UNet and DiT
    ):
        super().__init__()
        if context_dim is None:
            raise ValueError("MMDiT is text-conditional by design: use text=scratch|minilm or model=dit_*")
        if hidden_size % num_heads:
            raise ValueError(f"model.hidden_size={hidden_size} must be divisible by model.num_heads={num_heads}")
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels, self.patch_size = in_channels, out_channels, patch_size
        self.downsampling = patch_size  # the input must be a multiple of this (the training loop checks it)
        self.context_dim, self.frequency_dim = context_dim, frequency_dim
        self.patchify = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.context_embedder = nn.Linear(context_dim, hidden_size)
        self.time_embed = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.pooled_embed = (nn.Sequential(nn.Linear(pooled_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
                             if pooled_dim else None)  # SD3 embeds the pooled text with an MLP too
        self.class_embed = nn.Embedding(num_classes, hidden_size) if num_classes else None
        self.word_embed = nn.Embedding(vocab_size, hidden_size) if vocab_size else None
        self.blocks = nn.ModuleList(JointBlock(hidden_size, num_heads, mlp_ratio, context_pre_only=i == depth - 1)
                                    for i in range(depth))
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.out = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self._init_weights()

    def _init_weights(self):
        for module in self.modules():  # as DiT: Xavier-uniform linear layers, zero biases
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patchify.weight.view(self.patchify.weight.shape[0], -1))
        nn.init.normal_(self.time_embed[0].weight, std=0.02)
        nn.init.normal_(self.time_embed[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: both streams of every block start as the identity
            for stream in (block.image, block.text):
                nn.init.zeros_(stream.ada_ln[1].weight)
                nn.init.zeros_(stream.ada_ln[1].bias)
        for layer in (self.ada_out[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t, cond=None) -> torch.Tensor:
        batch, _, height, width = x.shape
        p = self.patch_size
        check_patch_grid(height, width, p, "MMDiT")
        context, context_mask = cond_field(cond, "context"), cond_field(cond, "context_mask")
        if context is None:
            raise ValueError("MMDiT needs text tokens: pass cond with `context` [B, L, context_dim]")
        c = condition_embedding(self, x, t, cond)  # (B, D)

        h = self.patchify(x)  # (B, D, H/p, W/p)
        grid_h, grid_w = h.shape[2:]
        h = (h.flatten(2).transpose(1, 2) + sincos_2d(grid_h, grid_w, h.shape[1]).to(h)).contiguous()  # (B, N, D)
        y = self.context_embedder(context.to(h.dtype))  # (B, L, D)
        key_mask = None
        if context_mask is not None:  # image keys are always real; padding text keys get -inf before the softmax
            real = torch.cat([torch.ones(batch, h.shape[1], dtype=torch.bool, device=h.device), context_mask.bool()], dim=1)
            key_mask = torch.zeros(real.shape, dtype=h.dtype, device=h.device).masked_fill(~real, float("-inf"))
            key_mask = key_mask[:, None, None, :]  # (B, 1, 1, N + L), added to the attention logits
        for block in self.blocks:
            h, y = block(h, y, c, key_mask)
        shift, scale = self.ada_out(c).chunk(2, dim=1)
        h = self.out(modulate(self.norm_out(h), shift, scale))  # (B, N, p*p*C)
        return unpatchify(h, grid_h, grid_w, p, self.out_channels)


__all__ = ["MMDiT", "JointBlock", "Stream"]
