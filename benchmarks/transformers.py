"""Our transformers beside diffusers' on the same work: DiT vs `DiTTransformer2DModel`, MMDiT vs
`SD3Transformer2DModel`. Rows `dit` and `mmdit` of `python -m benchmarks.run` (flops, train, sample, memory).

The mapping (read from diffusers' dit_transformer_2d.py / transformer_sd3.py and attention.py):
    ours (models/dit.py, models/mmdit.py)      diffusers
    hidden_size, num_heads                     num_attention_heads * attention_head_dim, num_attention_heads
    depth, patch_size, mlp_ratio 4             num_layers, patch_size, FeedForward(mult=4, "gelu-approximate")
    DiT num_classes = C + 1 (the null class)   num_embeds_ada_norm = C (its LabelEmbedding adds the null row)
    MMDiT context_dim, pooled_dim              joint_attention_dim, pooled_projection_dim
    MMDiT hidden_size                          caption_projection_dim (the text stream's width)
    no QK norm                                 qk_norm=None
Both are compared class-conditional (DiT: DiTTransformer2DModel has no text path) and text-conditional
(MMDiT) at the tiny sizes of conf/model/dit_tiny.yaml and mmdit_tiny.yaml, 32x32x3 inputs.
Known differences, in the row notes:
  - diffusers' DiT gives every block its own copy of the time + class embedding (AdaLayerNormZero with
    num_embeddings; conversions copy the same weights into each), so it holds depth - 1 extra copies;
    parameters are compared without them (the reference's total is reported too).
  - SD3's last block computes text queries whose outputs it throws away; ours has no text queries there
    (add_q_proj: D * D + D fewer parameters).
  - SD3Transformer2DModel takes no attention mask: it attends to padding tokens; ours masks them (the
    context is the same 20-token padded batch on both sides).
Sampling is 50 steps of one guided batch [uncond; cond] through the network with the same Euler update on
both sides (flow matching, t from 1 to 0): it times the backbone, not a scheduler.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from benchmarks.compare import SIDES, compared, count_flops, optimizer_for, training_step
from benchmarks.memory import run_fresh, step_peak
from benchmarks.settings import Settings
from benchmarks.setups import prompt_mask
from benchmarks.timing import Stopwatch, interleaved, median, spread
from diffusion.config import build

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
CONFIGS = {"dit": "dit_tiny", "mmdit": "mmdit_tiny"}
NUM_CLASSES = 10  # the class-conditional DiT: CIFAR-10's labels (+ the null class for guidance)
REFERENCE_CLASS = {"dit": "DiTTransformer2DModel", "mmdit": "SD3Transformer2DModel"}


@dataclass
class Inputs:
    x: torch.Tensor  # [B, C, H, W]
    t: torch.Tensor  # [B] timesteps in [0, 1000)
    labels: torch.Tensor | None = None  # [B] class labels (DiT); NUM_CLASSES is the null class
    context: torch.Tensor | None = None  # [B, L, D_text] (MMDiT)
    mask: torch.Tensor | None = None  # [B, L] True for real tokens
    pooled: torch.Tensor | None = None  # [B, D_text]
    target: torch.Tensor | None = None


def model_config(name: str):
    cfg = OmegaConf.load(CONF / f"{CONFIGS[name]}.yaml")
    if name == "dit":
        cfg.text_conditional = False
    return cfg


def build_ours(name: str, settings: Settings, channels: int = 3) -> torch.nn.Module:
    fill = {"in_channels": channels, "out_channels": channels}
    if name == "dit":
        fill["num_classes"] = NUM_CLASSES + 1
    else:
        fill.update(context_dim=settings.context_dim, pooled_dim=settings.context_dim)
    return build(model_config(name), where="model", **fill)


def build_reference(name: str, settings: Settings, channels: int = 3) -> torch.nn.Module:
    from diffusers import DiTTransformer2DModel, SD3Transformer2DModel

    cfg = model_config(name)
    assert cfg.mlp_ratio == 4.0, "diffusers' FeedForward is 4x wide"
    common = dict(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
                  in_channels=channels, out_channels=channels, num_layers=cfg.depth, patch_size=cfg.patch_size,
                  sample_size=settings.resolution)
    if name == "dit":
        return DiTTransformer2DModel(num_embeds_ada_norm=NUM_CLASSES, activation_fn="gelu-approximate", **common)
    return SD3Transformer2DModel(joint_attention_dim=settings.context_dim, pooled_projection_dim=settings.context_dim,
                                 caption_projection_dim=cfg.hidden_size, qk_norm=None,
                                 pos_embed_max_size=settings.resolution // cfg.patch_size, **common)


def make_inputs(name: str, batch: int, settings: Settings, seed: int = 0) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    image = (batch, 3, settings.resolution, settings.resolution)
    inputs = Inputs(x=torch.randn(image, generator=generator), t=torch.randint(0, 1000, (batch,), generator=generator),
                    target=torch.randn(image, generator=generator))
    if name == "dit":
        inputs.labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)
    else:
        inputs.context = torch.randn(batch, settings.context_length, settings.context_dim, generator=generator)
        inputs.mask = prompt_mask(batch, settings.context_length, generator)
        inputs.pooled = torch.randn(batch, settings.context_dim, generator=generator)
    for field in ("x", "t", "labels", "context", "mask", "pooled", "target"):
        if getattr(inputs, field) is not None:
            setattr(inputs, field, getattr(inputs, field).to(settings.device))
    return inputs


def ours_forward(model, inputs: Inputs) -> torch.Tensor:
    if inputs.labels is not None:
        return model(inputs.x, inputs.t, {"class_labels": inputs.labels})
    return model(inputs.x, inputs.t, {"context": inputs.context, "context_mask": inputs.mask, "pooled": inputs.pooled})


def reference_forward(model, inputs: Inputs) -> torch.Tensor:
    if inputs.labels is not None:
        return model(inputs.x, timestep=inputs.t, class_labels=inputs.labels).sample
    return model(inputs.x, encoder_hidden_states=inputs.context, pooled_projections=inputs.pooled, timestep=inputs.t).sample


FORWARD = {"ours": ours_forward, "reference": reference_forward}


# ---------------------------------------------------------------------------------------------- architecture


def parameter_counts(name: str, ours: torch.nn.Module, reference: torch.nn.Module, tolerance: float = 0.02) -> dict:
    """Parameter counts, the reference's without its per-block copies of the DiT conditioning embedding;
    asserted within `tolerance`."""
    total = sum(p.numel() for p in reference.parameters())
    duplicates = 0
    if name == "dit":  # blocks 1..depth-1 each hold another copy of block 0's time + class embedding
        duplicates = sum(p.numel() for block in reference.transformer_blocks[1:] for p in block.norm1.emb.parameters())
    mine, theirs = sum(p.numel() for p in ours.parameters()), total - duplicates
    difference = abs(mine - theirs) / theirs
    print(f"{name}: parameters ours {mine:,} vs {REFERENCE_CLASS[name]} {theirs:,} "
          f"({total:,} with its {duplicates:,} duplicated embedding parameters); difference {difference:.2%}",
          file=sys.stderr, flush=True)
    assert difference <= tolerance, f"{name}: parameters differ by {difference:.1%} (ours {mine}, reference {theirs})"
    return {"params_ours": mine, "params_reference": theirs, "params_reference_total": total,
            "params_difference": round(difference, 5)}


def architecture_notes(name: str, counts: dict) -> list[str]:
    cfg = model_config(name)
    size = f"D {cfg.hidden_size}, depth {cfg.depth}, {cfg.num_heads} heads, patch {cfg.patch_size}"
    if name == "dit":
        return [f"vs DiTTransformer2DModel, class-conditional ({NUM_CLASSES} classes), {size}; diffusers holds "
                f"{counts['params_reference_total']:,} parameters: a copy of the time + class embedding in every block, "
                f"counted once here"]
    return [f"vs SD3Transformer2DModel, text {Settings.context_length}x{Settings.context_dim} + pooled, {size}; "
            f"SD3's last block keeps text queries it discards (ours has none there); ours masks padding tokens, "
            f"SD3 takes no mask"]


# ---------------------------------------------------------------------------------------------- rows


def build_both(name: str, settings: Settings):
    torch.manual_seed(0)
    ours = build_ours(name, settings).to(settings.device)
    torch.manual_seed(0)
    reference = build_reference(name, settings).to(settings.device)
    return {"ours": ours, "reference": reference}


def flops_row(name: str, nets: dict, settings: Settings, batch: int = 2) -> dict:
    inputs = make_inputs(name, batch, settings)
    forward, train = {}, {}
    for side in SIDES:
        model = nets[side]
        with torch.no_grad():
            forward[side] = count_flops(lambda: FORWARD[side](model, inputs)) / batch / 1e9
        train[side] = count_flops(lambda: F.mse_loss(FORWARD[side](model, inputs), inputs.target).backward()) / batch / 1e9
        model.zero_grad(set_to_none=True)
    return compared("flops", name, "GFLOP/image (forward)", forward["ours"], forward["reference"], False,
                    train_gflop_per_image=train, resolution=settings.resolution,
                    train_to_forward={side: round(train[side] / forward[side], 3) for side in SIDES})


def train_row(name: str, nets: dict, settings: Settings) -> dict:
    inputs = make_inputs(name, settings.train_batch, settings)
    steps = {side: training_step(nets[side].train(), FORWARD[side], inputs, optimizer_for(nets[side], settings.device),
                                 settings) for side in SIDES}
    seconds = interleaved(steps, settings.repeats, settings.warmup, settings.device)
    rate = {side: settings.train_batch / median(seconds[side]) for side in SIDES}
    return compared("train", name, "images/s", rate["ours"], rate["reference"], True, batch=settings.train_batch,
                    seconds=seconds, spread={side: round(spread(seconds[side]), 3) for side in SIDES})


def guided_sampler(network, forward, cond: Inputs, uncond: Inputs, settings: Settings):
    """`sample_steps` Euler steps of the flow ODE, x <- x + (t_next - t) v, from t = 1 to 0; each step one
    forward of the batch [uncond; cond] and the guided v = v_u + w (v_c - v_u). The same code for both sides."""
    both = Inputs(x=None, t=None, labels=None if cond.labels is None else torch.cat([uncond.labels, cond.labels]),
                  context=None if cond.context is None else torch.cat([uncond.context, cond.context]),
                  mask=None if cond.mask is None else torch.cat([uncond.mask, cond.mask]),
                  pooled=None if cond.pooled is None else torch.cat([uncond.pooled, cond.pooled]))
    times = torch.linspace(1.0, 0.0, settings.sample_steps + 1).tolist()

    @torch.no_grad()
    def run():
        x = cond.x.clone()
        for t, t_next in zip(times[:-1], times[1:]):
            both.x = torch.cat([x, x])
            both.t = torch.full((both.x.shape[0],), 1000 * t, device=x.device)
            v_uncond, v_cond = forward(network, both).chunk(2)
            x = x + (t_next - t) * (v_uncond + settings.guidance_scale * (v_cond - v_uncond))
        return x

    return run


def sample_row(name: str, nets: dict, settings: Settings) -> dict:
    cond = make_inputs(name, settings.sample_batch, settings, seed=1)
    uncond = make_inputs(name, settings.sample_batch, settings, seed=2)
    uncond.x = cond.x
    if name == "dit":
        uncond.labels = torch.full_like(cond.labels, NUM_CLASSES)  # the null class
    else:
        uncond.mask = torch.zeros_like(cond.mask)
        uncond.mask[:, :2] = True  # the empty prompt: <bos> <eos>, padded to the same length
    watches = {side: Stopwatch(FORWARD[side], settings.device) for side in SIDES}
    runs = {side: guided_sampler(nets[side].eval(), watches[side], cond, uncond, settings) for side in SIDES}
    interleaved(runs, 0, 1, settings.device)  # warm-up: one whole run per side
    for watch in watches.values():
        watch.seconds = 0.0
    seconds = interleaved(runs, settings.sample_repeats or settings.repeats, 0, settings.device)
    rate = {side: settings.sample_batch / median(seconds[side]) for side in SIDES}
    overhead = {side: round(max(0.0, 1 - watches[side].seconds / sum(seconds[side])), 5) for side in SIDES}
    return compared("sample", name, "images/s", rate["ours"], rate["reference"], True, batch=settings.sample_batch,
                    steps=settings.sample_steps, guidance_scale=settings.guidance_scale,
                    network_batch=2 * settings.sample_batch, sampler_overhead=overhead, seconds=seconds,
                    spread={side: round(spread(seconds[side]), 3) for side in SIDES},
                    sampler="flow Euler, the same loop on both sides")


def memory_row(name: str, settings: Settings) -> dict:
    result = {side: measure_in_subprocess(side, name, settings) for side in SIDES}
    mib = {side: result[side]["peak_bytes"] / 2**20 for side in SIDES}
    return compared("memory", name, "MiB (training step peak)", mib["ours"], mib["reference"], False,
                    batch=settings.train_batch, method=result["ours"]["method"], details=result)


def rows(name: str, chosen: list[str], settings: Settings, log=print) -> list[dict]:
    """The compared rows for backbone `name` (dit | mmdit): `chosen` from flops, train, sample, memory."""
    nets = build_both(name, settings)
    counts = parameter_counts(name, nets["ours"], nets["reference"])
    notes = architecture_notes(name, counts)
    out = []
    for row_name, function in (("flops", flops_row), ("train", train_row), ("sample", sample_row)):
        if row_name in chosen:
            row = {**function(name, nets, settings), **counts, "notes": notes if row_name == "flops" else []}
            out.append(row)
            log(f"  {name} {row_name}: {row['ours']:.3f} vs {row['reference']:.3f} {row['unit']} (ratio {row['ratio']:.3f})")
    if "memory" in chosen:
        row = memory_row(name, settings)
        out.append(row)
        log(f"  {name} memory: {row['ours']:.1f} vs {row['reference']:.1f} MiB (ratio {row['ratio']:.3f})")
    return out


# ---------------------------------------------------------------------------------------------- memory, per process


def measure(side: str, name: str, settings: Settings) -> dict:
    """Peak memory of one training step of one side, in this (fresh) process: see benchmarks/memory.py."""
    torch.manual_seed(0)
    net = (build_ours if side == "ours" else build_reference)(name, settings).to(settings.device).train()
    inputs = make_inputs(name, settings.train_batch, settings)
    return step_peak(training_step(net, FORWARD[side], inputs, optimizer_for(net, settings.device), settings),
                     settings.device)


def measure_in_subprocess(side: str, name: str, settings: Settings, timeout: int = 900) -> dict:
    """`measure` in a fresh interpreter."""
    return run_fresh("benchmarks.transformers", [
        "--side", side, "--model", name, "--batch", str(settings.train_batch), "--device", str(settings.device),
        "--precision", settings.precision], f"{side}/{name}", timeout)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="one side's training-step memory (called by the memory row)")
    parser.add_argument("--side", choices=SIDES, required=True)
    parser.add_argument("--model", choices=tuple(CONFIGS), required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args(argv)
    settings = Settings(device=torch.device(args.device), precision=args.precision, train_batch=args.batch)
    print(json.dumps(measure(args.side, args.model, settings)))


if __name__ == "__main__":
    main()
