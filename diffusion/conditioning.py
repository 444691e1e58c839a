"""What the denoiser is conditioned on, as one small batch-shaped record."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Cond:
    context: torch.Tensor | None = None  # [B, L, D] token states to cross-attend to
    context_mask: torch.Tensor | None = None  # [B, L] True for real tokens
    pooled: torch.Tensor | None = None  # [B, D] one vector per prompt
    class_labels: torch.Tensor | None = None  # [B] int
    token_ids: torch.Tensor | None = None  # [B, L] int, the prompt's tokens (0 = padding; real ones per context_mask)
    r: torch.Tensor | None = None  # [B] MeanFlow's second time, in the network's time units (objectives/meanflow.py)
    guidance: torch.Tensor | None = None  # [B] iMF's guidance scale w, a conditioning input (objectives/meanflow.py)

    def __len__(self) -> int:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                return value.shape[0]
        return 0

    def map(self, fn) -> "Cond":
        """Apply fn to every tensor field (e.g. `.to(device)`, indexing, repeating)."""
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None})

    def to(self, device) -> "Cond":
        return self.map(lambda x: x.to(device))

    def __getitem__(self, index) -> "Cond":
        return self.map(lambda x: x[index])

    @staticmethod
    def cat(parts: list["Cond"]) -> "Cond":
        """Concatenate along the batch; token sequences are padded to the longest (mask False there)."""
        length = max((p.context.shape[1] for p in parts if p.context is not None), default=0)

        def pad(x, value):  # pad dim 1 of [B, L, ...] up to `length`
            extra = x.new_full((x.shape[0], length - x.shape[1], *x.shape[2:]), value)
            return torch.cat([x, extra], dim=1)

        merged = {}
        for f in fields(Cond):
            values = [getattr(p, f.name) for p in parts]
            if all(v is None for v in values):
                continue
            if f.name == "context":
                values = [pad(v, 0.0) for v in values]
            elif f.name == "context_mask":
                values = [pad(v, False) for v in values]
            elif f.name == "token_ids":
                values = [pad(v, 0) for v in values]
            merged[f.name] = torch.cat(values)
        return Cond(**merged)
