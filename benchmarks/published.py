"""The DDPM CIFAR-10 model (google/ddpm-cifar10-32's published config, random weights saved by diffusers) opened and
sampled by us beside diffusers, on the same machine in one run:

- sampling: DDIM-50 (eta 0, leading grid, clipped x0) of a batch from the same noise, our `load_model` network +
  `sample_loop` vs diffusers' `DDIMPipeline` (images/s, interleaved repeats, median); peak memory of one sampling
  run, each side in a fresh process;
- loading: `load_model(<pipeline folder>)` vs `UNet2DModel.from_pretrained(<folder>/unet)` (seconds, median).

    python -m benchmarks.published --device cpu --batch 8 --repeats 3          # writes benchmarks/results/<device>-published.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.memory import run_fresh, step_peak
from benchmarks.timing import device_slug, interleaved, machine_info, median, spread

HERE = Path(__file__).resolve().parent
DDPM_CIFAR10 = {  # google/ddpm-cifar10-32 config.json
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None, "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}


def write_pipeline(folder: Path, narrow: bool = False) -> Path:
    """A DDPMPipeline folder of the published config with random weights, saved by diffusers."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    config = {**DDPM_CIFAR10, **({"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1} if narrow else {})}
    torch.manual_seed(0)
    unet = UNet2DModel.from_config(config)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")).save_pretrained(folder)
    return folder


def samplers(folder: Path, batch: int, steps: int, device: torch.device) -> dict:
    """One call each: DDIM sampling of `batch` images from the same noise, ours and diffusers'."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    from diffusion.loading import load_model
    from diffusion.samplers import sample_loop

    loaded = load_model(folder, device)
    sampler, levels = loaded.sampler(), loaded.sampler().levels(steps)
    network = loaded.network
    reference = DDIMPipeline(unet=UNet2DModel.from_pretrained(folder / "unet").to(device).eval(),
                             scheduler=DDIMScheduler.from_pretrained(folder / "scheduler"))
    reference.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def ours():
        noise = torch.randn((batch, 3, 32, 32), generator=torch.Generator().manual_seed(0)).to(device)
        x = sample_loop(sampler, lambda x_t, t: network(x_t, torch.full((), t, device=device), None), noise, levels)
        return (x / 2 + 0.5).clamp(0, 1)

    def theirs():
        return reference(batch_size=batch, generator=torch.Generator().manual_seed(0), num_inference_steps=steps, eta=0.0,
                         use_clipped_model_output=True, output_type="pt").images

    return {"ours": ours, "reference": theirs}


def measure_memory(folder: str, side: str, batch: int, steps: int, device: str) -> None:
    """In a fresh process: the peak memory of one sampling run of `side` (prints one JSON line)."""
    device = torch.device(device)
    run = samplers(Path(folder), batch, steps, device)[side]
    print(json.dumps(step_peak(run, device)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.published", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--narrow", action="store_true", help="a narrowed network (the tests' quick run)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--memory-of", nargs=2, metavar=("FOLDER", "SIDE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        return measure_memory(args.memory_of[0], args.memory_of[1], args.batch, args.steps, args.device)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        folder = write_pipeline(Path(scratch) / "ddpm-cifar10-32", narrow=args.narrow)
        runs = samplers(folder, args.batch, args.steps, device)
        images = {side: run() for side, run in runs.items()}
        difference = float((images["ours"].cpu() - images["reference"].cpu()).abs().max())
        seconds = interleaved(runs, args.repeats, 0, device)
        rate = {side: args.batch / median(values) for side, values in seconds.items()}
        memory = {side: run_fresh("benchmarks.published", ["--memory-of", str(folder), side, "--batch", str(args.batch),
                                                           "--steps", str(args.steps), "--device", args.device],
                                  f"sampling/{side}") for side in runs}
        from diffusers import UNet2DModel

        from diffusion.loading import load_model

        load = interleaved({"ours": lambda: load_model(folder, device),
                            "reference": lambda: UNet2DModel.from_pretrained(folder / "unet").to(device)},
                           args.repeats, 1, device)
    mib = {side: memory[side]["peak_bytes"] / 2**20 for side in memory}
    results = {
        "meta": {"command": "python -m benchmarks.published " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "machine": machine_info(device), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
                 "model": "DDPM CIFAR-10 (google/ddpm-cifar10-32 config" + (", narrowed" if args.narrow else "") + ")",
                 "max_image_difference": difference},
        "rows": [
            {"row": "sample", "unit": f"images/s (DDIM-{args.steps}, batch {args.batch})", **rate,
             "ratio": rate["ours"] / rate["reference"], "seconds": seconds,
             "spread": {side: round(spread(v), 3) for side, v in seconds.items()}},
            {"row": "memory", "unit": "MiB (sampling-run peak)", **mib, "ratio": mib["reference"] / mib["ours"],
             "method": memory["ours"]["method"]},
            {"row": "load", "unit": "seconds", "ours": median(load["ours"]), "reference": median(load["reference"]),
             "ratio": median(load["reference"]) / median(load["ours"]), "seconds": load},
        ],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{device_slug(device)}-published{'-narrow' if args.narrow else ''}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    for row in results["rows"]:
        print(f"{row['row']:7s} {row['unit']:40s} ours {row['ours']:.4g}  diffusers {row['reference']:.4g}  "
              f"ratio {row['ratio']:.3f} (higher: ours better)")
    print(f"images equal to {difference:.1e}; wrote {path}")
    return results


if __name__ == "__main__":
    main()
