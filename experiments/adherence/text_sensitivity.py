"""How much does the text encoder's output move when one attribute word of a prompt changes?

    python experiments/adherence/text_sensitivity.py outputs/demo/<time>/checkpoints/last.ckpt [more.ckpt ...]
    python experiments/adherence/text_sensitivity.py --init       # a freshly initialised encoder, for reference

For a base caption and one edit per attribute (left -> right, red -> yellow, ...), prints the relative change
    |pooled(edited) - pooled(base)| / |pooled(base)|
of the pooled sentence vector, the same after the UNet's pooled-text MLP (what reaches the FiLM layers), and
the largest relative change of one token's state (what cross-attention can read). An attribute whose words
move none of these cannot be followed, whatever the guidance scale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASE = "a large songbird with blue wings, red, perched on a branch, facing left, in daylight"
EDITS = {
    "facing": ("left", "right"),
    "body_colour": ("red,", "yellow,"),
    "wing_colour": ("blue wings", "green wings"),
    "species": ("songbird", "duck"),
    "background": ("in daylight", "at night"),
    "pose": ("perched on a branch", "flying"),
}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp(min=1e-12))


@torch.no_grad()
def sensitivity(encoder, pooled_mlp=None) -> dict[str, dict[str, float]]:
    """{attribute: {pooled, after_mlp, max_token}} for the edits above."""
    base = encoder.encode([BASE])
    rows = {}
    for attribute, (old, new) in EDITS.items():
        edited = encoder.encode([BASE.replace(old, new)])
        row = {"pooled": relative(base.pooled, edited.pooled)}
        if pooled_mlp is not None:
            row["after_mlp"] = relative(pooled_mlp(base.pooled), pooled_mlp(edited.pooled))
        if base.states.shape == edited.states.shape:  # same token count: compare position by position
            per_token = (base.states - edited.states).norm(dim=-1) / base.states.norm(dim=-1)
            row["max_token"] = float(per_token.max())
        rows[attribute] = row
    return rows


def print_table(title: str, rows: dict) -> None:
    print(f"\n{title}")
    print(f"{'attribute':<12} {'pooled':>8} {'after MLP':>10} {'max token':>10}")
    for attribute, row in rows.items():
        cells = [f"{row[k]:.3f}" if k in row else "-" for k in ("pooled", "after_mlp", "max_token")]
        print(f"{attribute:<12} {cells[0]:>8} {cells[1]:>10} {cells[2]:>10}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", nargs="*", help="diffusion checkpoints with a scratch text encoder")
    p.add_argument("--init", action="store_true", help="also show a freshly initialised default encoder")
    args = p.parse_args(argv)
    if not args.ckpt and not args.init:
        p.error("give a checkpoint, or --init")
    if args.init:
        from hydra import compose, initialize_config_dir

        from diffusion.data.toybirds import ToyBirds
        from diffusion.model import build_diffusion_model
        from models.text_encoder import Tokenizer

        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train")
        vocabulary = Tokenizer.from_captions(ToyBirds(resolution=32).all_captions()).vocabulary
        torch.manual_seed(cfg.seed)
        model = build_diffusion_model(cfg, {"shape": (3, 32, 32)}, vocabulary)
        print_table("freshly initialised (seed 0)", sensitivity(model.text_encoder, model.denoiser.pooled_embed))
    from diffusion.loading import load_model

    for path in args.ckpt:
        model = load_model(path).model
        if not hasattr(model.text_encoder, "tokenizer"):
            sys.exit(f"error: {path} has no scratch text encoder (text=scratch); nothing to measure")
        print_table(path, sensitivity(model.text_encoder, model.denoiser.pooled_embed))


if __name__ == "__main__":
    main()
