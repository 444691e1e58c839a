"""Speed and memory of our UNet beside diffusers' on the same work, plus our own rows; one command.

    python -m benchmarks.run [--rows train,sample,...] [--device cpu|cuda] [--models tiny,small,base]
                             [--repeats N] [--quick] [--out DIR] [--write-readme]
    python -m benchmarks.run --rows dit,mmdit --threads 1 --write-readme   # the transformers (benchmarks/transformers.py)

Rows `dit` and `mmdit` put our DiT / MMDiT beside diffusers' DiTTransformer2DModel / SD3Transformer2DModel:
flops, train, sample and memory each, or only those of the four also named in --rows.
Writes <out>/<device>.json (e.g. cpu-intel-xeon.json, cuda-h100-80gb-hbm3.json; `-contiguous` appended
for --memory-format contiguous, `-<tag>` for --tag, which defaults to `transformers` when only dit / mmdit
rows are asked for (so that they do not replace the UNet results), `-quick` for --quick runs) and, with
--write-readme, regenerates benchmarks/README.md from every JSON in <out>.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks import compare, framework, report, transformers
from benchmarks.memory import memory_row
from benchmarks.settings import Settings
from benchmarks.setups import MODELS, build_pair, check_same_architecture, check_same_function, make_inputs
from benchmarks.timing import device_slug, load_average, machine_info

ROWS = ("flops", "train", "sample", "memory", "ema", "compile", "data", "latent", "dit", "mmdit")
UNET_ROWS = ("flops", "train", "sample", "memory", "ema", "compile")  # per --models UNet
BACKBONES = ("dit", "mmdit")  # transformer rows: ours vs diffusers (benchmarks/transformers.py)
HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {','.join(ROWS)}")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--models", default="tiny,small", help=f"comma-separated, from: {','.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=None, help="timed turns per side (default 5; 1 with --quick)")
    parser.add_argument("--sample-repeats", type=int, default=None,
                        help="timed sampling runs per side (default 3; 1 with --quick): each is --steps forward passes")
    parser.add_argument("--compile-models", default="tiny", help="models for the compile row (compilation takes minutes)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed turns per side first (default 2; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small batches, 2 sampling steps, 1 repeat")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="auto: bf16 autocast on CUDA, fp32 on CPU (both sides alike)")
    parser.add_argument("--memory-format", default="channels_last", choices=("channels_last", "contiguous"))
    parser.add_argument("--train-batch", type=int, default=None, help="default 32 (4 with --quick)")
    parser.add_argument("--sample-batch", type=int, default=None, help="images per sampling run (default 16; 2 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50; 2 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="directory for <device>.json")
    parser.add_argument("--write-readme", action="store_true", help="regenerate the README from the JSONs in --out")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md")
    parser.add_argument("--note", default=None, help="a line stored with the results (e.g. the machine's load)")
    parser.add_argument("--tag", default=None, help="appended to the results file name (default: `transformers` "
                                                    "when the rows are dit / mmdit only)")
    args = parser.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r]
    args.models = [m for m in args.models.split(",") if m]
    for name, chosen, allowed in (("rows", args.rows, ROWS), ("models", args.models, tuple(MODELS))):
        unknown = [c for c in chosen if c not in allowed]
        if unknown:
            parser.error(f"unknown {name} {unknown}; choose from {', '.join(allowed)}")
    return args


def make_settings(args) -> Settings:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA GPU is available here; use --device cpu")
    precision = ("bf16" if device.type == "cuda" else "fp32") if args.precision == "auto" else args.precision
    quick = args.quick
    pick = lambda value, normal, small: value if value is not None else (small if quick else normal)  # noqa: E731
    return Settings(device=device, precision=precision, memory_format=args.memory_format,
                    repeats=pick(args.repeats, 5, 1), warmup=pick(args.warmup, 2, 1),
                    train_batch=pick(args.train_batch, 32, 4), sample_batch=pick(args.sample_batch, 16, 2),
                    sample_steps=pick(args.steps, 50, 2), sample_repeats=pick(args.sample_repeats, 3, 1), data_batches=3 if quick else 20, quick=quick)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = make_settings(args)
    started = time.time()
    results = {"meta": {**machine_info(settings.device), "command": "python -m benchmarks.run " + shlex.join(sys.argv[1:] if args.argv is None else args.argv),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "note": args.note,
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
               "settings": settings.as_dict(), "rows": [], "todo": []}
    rows = results["rows"]
    train_images_per_s = {}
    for model in args.models if any(row in args.rows for row in UNET_ROWS) else []:
        pair = build_pair(model, settings.context_dim, resolution=settings.resolution, device=settings.device,
                          memory_format=settings.torch_memory_format)
        architecture = check_same_architecture(pair)
        if architecture["same_parameter_shapes"]:  # diffusers with our weights: does it compute our function?
            architecture.update(check_same_function(pair, make_inputs(pair, 2, settings.resolution, device=settings.device)))
        log(f"{model}: parameters ours {architecture['params_ours']:,} vs diffusers {architecture['params_reference']:,} "
            f"(same shapes: {architecture['same_parameter_shapes']}; with our weights the outputs differ by at most "
            f"{architecture.get('max_output_difference', float('nan')):.2g} of {architecture.get('max_output', float('nan')):.2g})")
        flops = None
        if "flops" in args.rows or settings.device.type == "cuda":
            flops = compare.flops_row(pair, settings)
            if "flops" in args.rows:
                rows.append({**flops, **architecture})
                log(f"  flops: {flops['ours']:.3f} vs {flops['reference']:.3f} GFLOP/image")
        train_seconds = None
        if "train" in args.rows:
            row = compare.train_row(pair, settings, flops)
            rows.append({**row, **architecture})
            train_seconds = settings.train_batch / row["ours"]
            train_images_per_s[model] = row["ours"]
            log(f"  train: {row['ours']:.1f} vs {row['reference']:.1f} images/s (ratio {row['ratio']:.3f})")
        if "sample" in args.rows:
            row = compare.sample_row(pair, settings, flops)
            rows.append({**row, **architecture})
            log(f"  sample: {row['ours']:.2f} vs {row['reference']:.2f} images/s (ratio {row['ratio']:.3f}); "
                f"sampler overhead {row['sampler_overhead']}")
        if "memory" in args.rows:
            row = memory_row(model, settings)
            rows.append(row)
            log(f"  memory: {row['ours']:.1f} vs {row['reference']:.1f} MiB (ratio {row['ratio']:.3f})")
        if "ema" in args.rows:
            row = framework.ema_row(pair, settings, train_seconds)
            rows.append(row)
            log(f"  ema: plain {row['plain_loop']:.2f} ms, foreach {row['foreach']:.2f} ms")
        if "compile" in args.rows and model in args.compile_models.split(","):
            row = framework.compile_row(pair, settings)
            rows.append(row)
            log(f"  compile: eager {row['eager']:.1f}, compiled {row['compiled']:.1f} images/s "
                f"(compilation {row['compile_seconds']} s)")
        del pair
    if "data" in args.rows:
        row = framework.data_row(settings, train_images_per_s.get("tiny"))
        rows.append(row)
        log(f"  data: {row['workers_0']:.0f} images/s (0 workers), {row['workers_1']:.0f} (1 worker)")
    if "latent" in args.rows:
        if (HERE.parent / "models" / "vae.py").is_file():
            row = framework.latent_row(settings, image_resolution=32 if settings.quick else 64)
            rows.append(row)
            log(f"  latent: train pixels {row['pixels']:.1f}, latents {row['latents']:.1f} images/s")
        else:
            results["todo"].append("latent_vs_pixel: models/vae.py does not exist yet")
    for backbone in (b for b in BACKBONES if b in args.rows):
        chosen = [r for r in ("flops", "train", "sample", "memory") if r in args.rows] or ["flops", "train", "sample", "memory"]
        rows.extend(transformers.rows(backbone, chosen, settings, log))
    if settings.device.type == "cpu" and set(args.rows) <= set(BACKBONES):
        results["todo"].append(f"GPU rows: python -m benchmarks.run --device cuda --rows {','.join(args.rows)} --write-readme")
    elif settings.device.type == "cpu":
        results["todo"].append("GPU rows (and model FLOP utilisation): python -m benchmarks.run --device cuda "
                               "--models tiny,small,base --write-readme")
    results["meta"]["load_average_after"] = load_average()
    results["meta"]["duration_s"] = round(time.time() - started, 1)
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    args.argv = argv
    results = run(args)
    settings = results["settings"]
    tag = args.tag if args.tag is not None else ("transformers" if set(args.rows) <= set(BACKBONES) else "")
    name = (device_slug(results_device(results)) + ("-contiguous" if settings["memory_format"] == "contiguous" else "")
            + (f"-{tag}" if tag else "") + ("-quick" if args.quick else ""))
    path = report.write_json(results, args.out / f"{name}.json")
    log(f"wrote {path}")
    print("\n".join(report.compared_table(results["rows"]) + [""] + report.framework_table(results["rows"])))
    if args.write_readme:
        args.readme.write_text(report.readme(args.out))
        log(f"wrote {args.readme}")


def results_device(results: dict) -> torch.device:
    return torch.device(results["settings"]["device"])


if __name__ == "__main__":
    main()
