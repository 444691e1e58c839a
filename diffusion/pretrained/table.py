"""The engine behind every key table in this package: published tensors -> ours, and back.

A format's table is a list of `(published module, our module, rows)`; each `Row` names tensors inside those two
modules, without the `.weight` / `.bias` ending: the row is applied to each ending the published module has.
So a reader of `diffusers_unet.py` sees that `down_blocks.1.attentions.0.to_q` lands in `down.3.attention.qkv`.

Most rows rename. The others:
- several names on one side are concatenated along the output dimension (dim 0): diffusers' `to_q`, `to_k`,
  `to_v` are our one `qkv`; `parts` says how many equal units each name holds when they differ (the original DiT's
  `qkv` is our `q` (1 unit) and `kv` (2 units));
- `copies`: every published name holds the same tensor (diffusers' DiT repeats the time and class embedding in
  every block; we keep one), checked equal on the way in and written to each on the way out;
- `conv`: a published linear weight [out, in] is our 1x1 convolution [out, in, 1, 1].

Keys that fit no row, and rows whose published tensors are absent, raise a `UserError` naming the first of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion.errors import UserError

ENDINGS = ("weight", "bias")


@dataclass(frozen=True)
class Row:
    published: tuple[str, ...]
    ours: tuple[str, ...]
    published_parts: tuple[int, ...]  # equal units of the concatenation each name holds (dim 0)
    ours_parts: tuple[int, ...]
    copies: bool = False  # every published name holds the same tensor
    conv: bool = False  # published linear [out, in] <-> our 1x1 convolution [out, in, 1, 1]
    optional: bool = False  # absent in some networks of the family (a residual block's skip where widths agree)


def row(published, ours, *, parts=None, copies: bool = False, conv: bool = False, optional: bool = False) -> Row:
    """One row: `published` and `ours` are a name or a tuple of names; `parts=(published units, our units)`."""
    published = (published,) if isinstance(published, str) else tuple(published)
    ours = (ours,) if isinstance(ours, str) else tuple(ours)
    published_parts, ours_parts = parts or ((1,) * len(published), (1,) * len(ours))
    return Row(published, ours, tuple(published_parts), tuple(ours_parts), copies, conv, optional)


WHOLE = [row("", "")]  # the module's own tensors, renamed as they are


def under(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


# diffusers before 0.14 named its spatial attention's layers differently; its loader renames them, and so do we
DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def modern_attention_names(state_dict: dict) -> dict:
    """`...attentions.0.query.weight` -> `...attentions.0.to_q.weight` (and key, value, proj_attn)."""
    renamed = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        if len(parts) >= 2 and parts[-2] in DEPRECATED_ATTENTION and "attentions" in parts:
            key = ".".join([*parts[:-2], DEPRECATED_ATTENTION[parts[-2]], parts[-1]])
        renamed[key] = tensor
    return renamed


def indices(keys, prefix: str) -> list[int]:
    """The sorted integers that follow `prefix` in `keys` (`down_blocks.` -> [0, 1, 2, 3])."""
    found = {key[len(prefix):].split(".", 1)[0] for key in keys if key.startswith(prefix)}
    return sorted(int(index) for index in found if index.isdigit())


def split_units(whole: torch.Tensor, parts: tuple[int, ...]) -> list[torch.Tensor]:
    unit = whole.shape[0] // sum(parts)
    if unit * sum(parts) != whole.shape[0]:
        raise UserError(f"a fused tensor of {whole.shape[0]} rows cannot be split into {sum(parts)} equal parts")
    return list(torch.split(whole, [unit * p for p in parts], dim=0))


def as_conv(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[:, :, None, None] if tensor.ndim == 2 else tensor


def as_linear(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[:, :, 0, 0] if tensor.ndim == 4 else tensor


def first_keys(keys, count: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:count]) + (f" (and {len(keys) - count} more)" if len(keys) > count else "")


def convert(table, state_dict: dict, source: str, to_ours: bool) -> dict:
    """Apply `table` (a list of (published module, our module, rows)) to a state dict, either way."""
    left = set(state_dict)
    out, missing = {}, []
    for published_module, our_module, rows in table:
        for r in rows:
            names_in = [under(published_module, n) for n in r.published]
            names_out = [under(our_module, n) for n in r.ours]
            parts_in, parts_out = r.published_parts, r.ours_parts
            if not to_ours:
                names_in, names_out, parts_in, parts_out = names_out, names_in, parts_out, parts_in
            found = False
            for ending in ENDINGS:
                keys = [f"{name}.{ending}" for name in names_in]
                present = [key in state_dict for key in keys]
                if not any(present):
                    continue
                left.difference_update(keys)  # a known tensor, even when the row is incomplete
                if not all(present):
                    missing += [key for key, here in zip(keys, present) if not here]
                    continue
                found = True
                tensors = [state_dict[key] for key in keys]
                if r.copies:
                    out.update(copied(keys, tensors, [f"{n}.{ending}" for n in names_out], source))
                    continue
                whole = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
                if r.conv:
                    whole = as_conv(whole) if to_ours else as_linear(whole)
                pieces = [whole] if len(names_out) == 1 else split_units(whole, parts_out)
                for name, piece in zip(names_out, pieces):
                    out[f"{name}.{ending}"] = piece if len(pieces) == 1 and len(tensors) == 1 else piece.clone()
            if not found and not r.optional:
                missing.append(f"{names_in[0]}.{ENDINGS[0]}")
    side = "published" if to_ours else "our"
    if left:
        raise UserError(f"{source}: {len(left)} {side} keys fit no known layer, first: {first_keys(left)}")
    if missing:
        raise UserError(f"{source}: {len(missing)} {side} keys are missing, first: {first_keys(missing)}")
    return out


def float32(state_dict: dict) -> dict:
    """Half-precision tensors (fp16 / bf16 files, e.g. `v1-5-pruned-emaonly-fp16.safetensors`) as float32: the
    networks are built in float32 and CPU half-precision kernels are slow or missing; `dtype=` casts them afterwards."""
    return {key: tensor.float() if tensor.is_floating_point() and tensor.dtype != torch.float32 else tensor
            for key, tensor in state_dict.items()}


def copied(keys, tensors, names_out, source: str) -> dict:
    """A `copies` row. In: check every published copy equals the first, keep one. Out: one clone per published name."""
    if len(names_out) == 1:
        for key, tensor in zip(keys[1:], tensors[1:]):
            if not torch.equal(tensor, tensors[0]):
                raise UserError(f"{source}: {key} differs from {keys[0]}; this network holds one copy of it")
        return {names_out[0]: tensors[0]}
    return {name: tensors[0].clone() for name in names_out}
