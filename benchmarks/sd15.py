"""Stable Diffusion 1.5's UNet (runwayml/stable-diffusion-v1-5 unet/config.json, random weights) run by us beside
diffusers' UNet2DConditionModel on the same weights, on the same machine in one run:

- forward: one batch of latents and 77 CLIP states through each network (images/s, interleaved repeats, median);
- guided DDIM step: the batch [uncond; cond] through the network, eps = eps_u + w (eps_c - eps_u) (w = 7.5), then
  the DDIM update (Song et al. 2021, eq. 12, eta = 0), the same update code on both sides: it times the network;
- memory: the peak of one guided step (no gradients), each side in a fresh process (benchmarks/memory.py).

    python -m benchmarks.sd15 --device cpu --latent 32 --repeats 3              # full size: ...-sd15.json
    python -m benchmarks.sd15 --device cpu --latent 64 --repeats 3 --narrow     # 32-wide: ...-sd15-narrow.json
    python -m benchmarks.sd15 --device cuda --dtype bf16 --latent 64 --repeats 5  # the GPU row (benchmarks/gpu.sh)

A latent of 64x64 is a 512x512 image; on a 2-core CPU the full network's forward at 64x64 takes ~10 s, so the
committed full-size row uses 32x32 latents (256x256 images): the same layers, a quarter of the positions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from benchmarks.memory import run_fresh, step_peak
from benchmarks.timing import device_slug, interleaved, machine_info, median, spread
from diffusion.pretrained.diffusers_sd_unet import SD15_CONFIG

HERE = Path(__file__).resolve().parent
SIDES = ("ours", "reference")
SD15_UNET = SD15_CONFIG  # runwayml/stable-diffusion-v1-5 unet/config.json (diffusion/pretrained/diffusers_sd_unet.py)
NARROW = {"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32}  # the default suite's narrowed variant
GUIDANCE_SCALE = 7.5
TOKENS = 77  # CLIP's context length
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def config_for(narrow: bool) -> dict:
    return {**SD15_UNET, **(NARROW if narrow else {})}


def networks(narrow: bool, sides=SIDES) -> dict:
    """{side: network} on the same random weights: diffusers' model drawn, ours loaded from its state dict."""
    from diffusers import UNet2DConditionModel

    from diffusion.config import build
    from diffusion.pretrained import diffusers_sd_unet

    config = config_for(narrow)
    torch.manual_seed(0)
    reference = UNet2DConditionModel.from_config(config).eval()
    with torch.no_grad():
        for parameter in reference.parameters():  # zero-initialised layers too, so every layer does work
            parameter.add_(0.02 * torch.randn_like(parameter))
    out = {}
    if "ours" in sides:
        kwargs = diffusers_sd_unet.network_config(config)
        with torch.device("meta"):
            ours = build(OmegaConf.create(kwargs), where="benchmark")
        ours.load_state_dict(diffusers_sd_unet.to_ours(reference.state_dict()), strict=True, assign=True)
        out["ours"] = ours.eval()
    if "reference" in sides:
        out["reference"] = reference
    return out


def forwards(nets: dict) -> dict:
    """(network, x_t, t, context) -> eps, for each side."""
    return {"ours": lambda x_t, t, context: nets["ours"](x_t, t, {"context": context}),
            "reference": lambda x_t, t, context: nets["reference"](x_t, t, encoder_hidden_states=context).sample}


def inputs(narrow: bool, batch: int, latent: int, device: torch.device, seed: int = 0,
           dtype: torch.dtype = torch.float32) -> dict:
    width = config_for(narrow)["cross_attention_dim"]
    generator = torch.Generator().manual_seed(seed)
    return {"x_t": torch.randn(batch, 4, latent, latent, generator=generator).to(device, dtype),  # (B, 4, h, w)
            "cond": torch.randn(batch, TOKENS, width, generator=generator).to(device, dtype),  # (B, 77, 768)
            "uncond": torch.randn(batch, TOKENS, width, generator=generator).to(device, dtype)}


def ddim_step(eps, x_t, alpha_bar_t: float, alpha_bar_prev: float):
    """DDIM eta = 0 (Song et al. 2021, eq. 12): x_prev = sqrt(a_prev) pred_x0 + sqrt(1 - a_prev) eps."""
    pred_x0 = (x_t - (1 - alpha_bar_t) ** 0.5 * eps) / alpha_bar_t ** 0.5
    return alpha_bar_prev ** 0.5 * pred_x0 + (1 - alpha_bar_prev) ** 0.5 * eps


def guided_step(forward, data: dict, t: int = 981, t_prev: int = 941):
    """One guided DDIM step of SD's schedule (scaled linear betas 0.00085..0.012, 1000 steps; DDIM-25's first step)."""
    alphas_cumprod = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0)
    alpha_bar_t, alpha_bar_prev = float(alphas_cumprod[t]), float(alphas_cumprod[t_prev])

    @torch.no_grad()
    def run():
        x_t = data["x_t"]
        both = torch.cat([x_t, x_t])  # (2B, 4, h, w): [uncond; cond]
        context = torch.cat([data["uncond"], data["cond"]])  # (2B, 77, D)
        eps_uncond, eps_cond = forward(both, torch.full((both.shape[0],), t, device=x_t.device), context).chunk(2)
        eps = eps_uncond + GUIDANCE_SCALE * (eps_cond - eps_uncond)
        return ddim_step(eps, x_t, alpha_bar_t, alpha_bar_prev)

    return run


def measure_memory(side: str, narrow: bool, latent: int, device: str, dtype: torch.dtype) -> None:
    """In a fresh process: the peak memory of one guided step of `side` (prints one JSON line)."""
    device = torch.device(device)
    nets = {name: net.to(device, dtype) for name, net in networks(narrow, (side,)).items()}
    forward = forwards(nets)[side]
    print(json.dumps(step_peak(guided_step(forward, inputs(narrow, 1, latent, device, dtype=dtype)), device)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sd15", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--latent", type=int, default=64, help="latent side (64: 512x512 images)")
    p.add_argument("--batch", type=int, default=1, help="images a forward / guided step (the step runs 2x this)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--narrow", action="store_true", help="the 32-wide variant the default test suite runs")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), help="both networks' weights and inputs")
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory row")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--memory-of", metavar="SIDE", choices=SIDES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        return measure_memory(args.memory_of, args.narrow, args.latent, args.device, DTYPES[args.dtype])
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    nets = {side: net.to(device, dtype) for side, net in networks(args.narrow).items()}
    call = forwards(nets)
    data = inputs(args.narrow, args.batch, args.latent, device, dtype=dtype)
    t = torch.full((args.batch,), 500, device=device)

    def forward_of(side):
        return torch.no_grad()(lambda: call[side](data["x_t"], t, data["cond"]))

    forward_runs = {side: forward_of(side) for side in SIDES}
    step_runs = {side: guided_step(call[side], data) for side in SIDES}
    difference = float((forward_runs["ours"]() - forward_runs["reference"]()).abs().max())
    step_difference = float((step_runs["ours"]() - step_runs["reference"]()).abs().max())
    rows = []
    for name, runs, per_call in (("forward", forward_runs, args.batch), ("guided DDIM step", step_runs, args.batch)):
        seconds = interleaved(runs, args.repeats, 1, device)
        rate = {side: per_call / median(values) for side, values in seconds.items()}
        unit = f"images/s (batch {args.batch}" + (", network batch 2x" if name != "forward" else "") + ")"
        rows.append({"row": name, "unit": unit, **rate, "ratio": rate["ours"] / rate["reference"], "seconds": seconds,
                     "spread": {side: round(spread(v), 3) for side, v in seconds.items()}})
    del nets, call, forward_runs, step_runs
    if not args.no_memory:
        extra = (["--latent", str(args.latent), "--device", args.device, "--dtype", args.dtype]
                 + (["--narrow"] if args.narrow else []))
        memory = {side: run_fresh("benchmarks.sd15", ["--memory-of", side, *extra], f"guided step/{side}", timeout=1800)
                  for side in SIDES}
        mib = {side: memory[side]["peak_bytes"] / 2**20 for side in SIDES}
        rows.append({"row": "memory", "unit": "MiB (guided-step peak, batch 1)", **mib,
                     "ratio": mib["reference"] / mib["ours"], "method": memory["ours"]["method"]})
    model = "SD 1.5 UNet (runwayml/stable-diffusion-v1-5 unet config" + (", narrowed to 32-wide" if args.narrow else "")
    results = {
        "meta": {"command": "python -m benchmarks.sd15 " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "machine": machine_info(device), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
                 "model": model + f"), {args.latent}x{args.latent} latents, 77 x "
                                  f"{config_for(args.narrow)['cross_attention_dim']} text states, {args.dtype}",
                 "max_eps_difference": difference, "max_step_difference": step_difference},
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ("-narrow" if args.narrow else "") + ("" if args.dtype == "fp32" else f"-{args.dtype}")
    path = out / f"{device_slug(device)}-sd15{suffix}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    for row in rows:
        print(f"{row['row']:17s} {row['unit']:42s} ours {row['ours']:.4g}  diffusers {row['reference']:.4g}  "
              f"ratio {row['ratio']:.3f} (higher: ours better)")
    print(f"eps equal to {difference:.1e}, the guided step to {step_difference:.1e}; wrote {path}")
    return results


if __name__ == "__main__":
    main()
