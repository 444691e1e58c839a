"""The one command to run the moment a GPU is lent: `benchmarks/gpu.sh` (the same as `python -m benchmarks.gpu`).

    benchmarks/gpu.sh                      # on a CUDA machine: the gpu preset, about 4 minutes on an H100
    benchmarks/gpu.sh --preset tiny        # anywhere: the same code path, tiny (what `make test` runs on CPU)
    benchmarks/gpu.sh --budget-s 200 --out /tmp/results

Preset `gpu` (the default when CUDA is present): `unet_base` (the DDPM CIFAR-10 network, 35.7M,
unconditional) at 32x32, batch 128, bf16 autocast, SDPA, fused AdamW, ours beside diffusers' `UNet2DModel`
built to the same architecture, timed in turns in one process:

    flops        forward and training FLOPs per image (FlopCounterMode), both sides
    train        images/s and model FLOP utilisation (achieved FLOP/s / the card's dense bf16 peak, looked up
                 by device name: H100 SXM 989.4 TFLOP/s) for 4 variants: eager / torch.compile x
                 channels_last / contiguous (the compile time of each side is recorded)
    sample       DDIM, 50 steps, batch 128, images/s and MFU, eager, channels_last
    memory       peak memory of a training step (eager, channels_last), each side in a fresh process

Variants run in that order of priority; one that would start after `--budget-s` seconds is skipped and
listed under "todo", so a lent GPU's few minutes always yield a results file.
Preset `tiny` (the default on CPU): unet_tiny, batch 4, fp32, 2 DDIM steps, one timed turn, and
torch.compile with the `eager` backend (dynamo's graph capture of both networks, run eagerly: neither inductor's
code generation, minutes on a CPU, nor AOT autograd, which tests/test_fast_paths.py checks on our UNet), compiled
in channels_last only: every code path of this script in about half a minute, not figures to quote.

Writes <out>/<device>.json for the gpu preset (e.g. cuda-h100-80gb-hbm3.json) and <device>-tiny.json for the
tiny one, in the schema of `python -m benchmarks.run` (its README generator reads both).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import compare, report
from benchmarks.memory import memory_row
from benchmarks.settings import Settings
from benchmarks.setups import FORWARD, Pair, build_pair, check_same_architecture, make_inputs
from benchmarks.timing import device_slug, load_average, machine_info, synchronize

HERE = Path(__file__).resolve().parent
PRESETS = {
    "gpu": dict(model="base", precision="bf16", train_batch=128, sample_batch=128, sample_steps=50, repeats=5, warmup=2,
                sample_repeats=3, compile_backend="inductor", compile_layouts=("channels_last", "contiguous")),
    "tiny": dict(model="tiny", precision="fp32", train_batch=4, sample_batch=2, sample_steps=2, repeats=1, warmup=1,
                 sample_repeats=1, compile_backend="eager", compile_layouts=("channels_last",)),
}
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def compile_pair(pair: Pair, settings: Settings, backend: str) -> tuple[Pair, dict]:
    """Both networks under torch.compile, and the seconds each side's first training step took (compilation)."""
    compiled = Pair(pair.name, torch.compile(pair.ours, backend=backend), torch.compile(pair.reference, backend=backend),
                    pair.context_dim)
    inputs = make_inputs(pair, settings.train_batch, settings.resolution, context_length=settings.context_length,
                         device=settings.device, memory_format=settings.torch_memory_format)
    seconds = {}
    for side in compare.SIDES:
        model = getattr(compiled, side).train()
        step = compare.training_step(model, FORWARD[side], inputs, compare.optimizer_for(model, settings.device), settings)
        synchronize(settings.device)
        start = time.perf_counter()
        step()  # compiles forward and backward for these shapes
        synchronize(settings.device)
        seconds[side] = round(time.perf_counter() - start, 1)
    return compiled, seconds


def labelled(row: dict, model: str, mode: str, layout: str) -> dict:
    """A compared row for one variant: the README table shows it in its model column."""
    return {**row, "model": f"{model} · {mode} · {layout}", "variant": {"compile": mode != "eager", "memory_format": layout}}


def run(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA GPU is available here; run --preset tiny --device cpu")
    preset_name = args.preset if args.preset != "auto" else ("gpu" if device.type == "cuda" else "tiny")
    preset = PRESETS[preset_name]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what a GPU user runs with (bf16 autocast covers most matmuls)
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    base = Settings(device=device, precision=preset["precision"], memory_format="channels_last", repeats=preset["repeats"],
                    warmup=preset["warmup"], train_batch=preset["train_batch"], sample_batch=preset["sample_batch"],
                    sample_steps=preset["sample_steps"], sample_repeats=preset["sample_repeats"],
                    quick=preset_name == "tiny")
    started = time.time()
    command = "benchmarks/gpu.sh " + shlex.join(args.argv if args.argv is not None else sys.argv[1:])
    results = {"meta": {**machine_info(device), "command": command.strip(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "note": args.note or f"preset {preset_name}; compile backend {preset['compile_backend']}",
                        "omp_num_threads": None, "preset": preset_name},
               "settings": {**base.as_dict(), "memory_format": "channels_last and contiguous (see each row)"},
               "rows": [], "todo": []}
    rows, model = results["rows"], preset["model"]

    def in_budget(what: str) -> bool:
        spent = time.time() - started
        if spent <= args.budget_s:
            return True
        results["todo"].append(f"{what}: skipped, the run had spent {spent:.0f} s of its {args.budget_s} s budget")
        log(f"  {what}: skipped (budget)")
        return False

    pairs = {layout: build_pair(model, base.context_dim, resolution=base.resolution, device=device, memory_format=fmt)
             for layout, fmt in FORMATS.items()}
    architecture = check_same_architecture(pairs["channels_last"])
    log(f"{model}: parameters ours {architecture['params_ours']:,} vs diffusers {architecture['params_reference']:,}; "
        f"preset {preset_name} on {device}")
    flops = compare.flops_row(pairs["channels_last"], base)
    rows.append({**flops, **architecture})
    log(f"  flops: {flops['ours']:.3f} vs {flops['reference']:.3f} GFLOP/image forward")

    plan = [("train", "eager", "channels_last"), ("train", "eager", "contiguous"), ("sample", "eager", "channels_last"),
            ("memory", "eager", "channels_last"), ("train", "compile", "channels_last"), ("train", "compile", "contiguous")]
    for kind, mode, layout in plan:
        what = f"{kind} {mode} {layout}"
        if mode == "compile" and layout not in preset["compile_layouts"]:
            results["todo"].append(f"{what}: not in the {preset_name} preset (the same code as compile channels_last)")
            continue
        if not in_budget(what):
            continue
        settings = replace(base, memory_format=layout)
        pair = pairs[layout]
        if kind == "memory":
            row = labelled(memory_row(model, settings), model, mode, layout)
            log(f"  {what}: {row['ours']:.1f} vs {row['reference']:.1f} MiB (ratio {row['ratio']:.3f})")
        elif kind == "sample":
            row = labelled(compare.sample_row(pair, settings, flops), model, mode, layout)
            log(f"  {what}: {row['ours']:.2f} vs {row['reference']:.2f} images/s (ratio {row['ratio']:.3f})")
        else:
            compile_seconds = None
            if mode == "compile":
                pair, compile_seconds = compile_pair(pair, settings, preset["compile_backend"])
            row = labelled(compare.train_row(pair, settings, flops), model, mode, layout)
            if compile_seconds:
                row.update(compile_seconds=compile_seconds, compile_backend=preset["compile_backend"])
            mfu = row.get("mfu")
            log(f"  {what}: {row['ours']:.1f} vs {row['reference']:.1f} images/s (ratio {row['ratio']:.3f})"
                + (f", MFU {mfu['ours']:.1%} vs {mfu['reference']:.1%}" if mfu else ""))
        if device.type == "cuda":
            row["peak_memory_gib_in_process"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        rows.append(row)
    if compare.peak_flops(device, base.precision) is None:
        results["todo"].append("MFU: no dense bf16 peak is known for this device (reported for bf16 on H100 / H200 / A100)")
    results["meta"]["load_average_after"] = load_average()
    results["meta"]["duration_s"] = round(time.time() - started, 1)
    return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="auto", choices=("auto", *PRESETS), help="auto: gpu on CUDA, tiny on CPU")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="start no new variant after this many seconds (default 240: the run ends within ~5 min)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="directory for the results JSON")
    parser.add_argument("--write-readme", action="store_true", help="regenerate benchmarks/README.md from --out")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md")
    parser.add_argument("--note", default=None)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.argv = argv
    results = run(args)
    name = device_slug(torch.device(results["settings"]["device"])) + ("-tiny" if results["meta"]["preset"] == "tiny" else "")
    path = report.write_json(results, args.out / f"{name}.json")
    log(f"wrote {path}")
    print("\n".join(report.compared_table(results["rows"])))
    if results["todo"]:
        print("\n".join(f"- {item}" for item in results["todo"]))
    if args.write_readme:
        args.readme.write_text(report.readme(args.out))
        log(f"wrote {args.readme}")


if __name__ == "__main__":
    main()
