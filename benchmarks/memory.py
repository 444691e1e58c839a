"""Peak memory of one training step, each side measured in a fresh process of its own.

    python -m benchmarks.memory --side ours --model tiny --batch 32 --device cpu

CUDA: torch.cuda.max_memory_allocated over a step (after a warm-up step and a peak reset): every tensor
alive at the peak, weights, gradients and AdamW state included.
CPU: the growth of the resident set over a step. After a warm-up step (so that AdamW's state and one-time
buffers exist), the kernel's peak-RSS counter is reset (/proc/self/clear_refs, 5) and the step's peak
VmHWM minus the RSS before it is reported: activations, gradients and temporaries. glibc's malloc is told
to hand every block of 64 KiB or more straight back to the kernel (MALLOC_MMAP_THRESHOLD_), so the RSS
follows the live tensors instead of a heap that never shrinks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

CPU_METHOD = ("peak RSS growth over one training step in a fresh process (after a warm-up step; VmHWM reset "
              "through /proc/self/clear_refs; MALLOC_MMAP_THRESHOLD_=65536 so freed tensors leave the RSS)")
CUDA_METHOD = "torch.cuda.max_memory_allocated over one training step in a fresh process (after a warm-up step)"


def _status_kib(field: str) -> int:
    return int(re.search(field + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure(side: str, model: str, batch: int, resolution: int, context_dim: int, context_length: int,
            device: torch.device, precision: str, memory_format: str) -> dict:
    from benchmarks.compare import optimizer_for, training_step
    from benchmarks.settings import Settings
    from benchmarks.setups import FORWARD, UNCONDITIONAL, Pair, build_ours, build_reference, make_inputs

    settings = Settings(device=device, precision=precision, memory_format=memory_format, resolution=resolution)
    context_dim = None if model in UNCONDITIONAL else context_dim
    torch.manual_seed(0)
    net = build_ours(model, context_dim) if side == "ours" else build_reference(model, context_dim, resolution=resolution)
    net = net.to(device, memory_format=settings.torch_memory_format).train()
    pair = Pair(model, net, net, context_dim)  # only this side is built; make_inputs needs the context width
    inputs = make_inputs(pair, batch, resolution, context_length=context_length, device=device,
                         memory_format=settings.torch_memory_format)
    return step_peak(training_step(net, FORWARD[side], inputs, optimizer_for(net, device), settings), device)


def step_peak(step, device: torch.device) -> dict:
    """Peak memory of one call of `step` (after a warm-up call), in this process: CUDA's allocator peak, or on
    CPU the resident set's growth (meaningful only in a fresh process: see `run_fresh`)."""
    step()  # warm-up: AdamW state, one-time kernels and buffers
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_bytes": peak, "growth_bytes": peak - before, "method": CUDA_METHOD}
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS") * 1024
    step()
    peak = _status_kib("VmHWM") * 1024
    return {"peak_bytes": peak - before, "process_peak_bytes": peak, "method": CPU_METHOD}


def run_fresh(module: str, arguments: list[str], what: str, timeout: int = 900) -> dict:
    """Run `python -m module arguments` in a fresh interpreter (nothing else allocated there, freed tensors
    returned to the OS) and read the JSON line it prints last."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run([sys.executable, "-m", module, *arguments], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {what} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_in_subprocess(side: str, model: str, batch: int, settings, timeout: int = 900) -> dict:
    """`measure` in a fresh interpreter."""
    return run_fresh("benchmarks.memory", [
        "--side", side, "--model", model, "--batch", str(batch), "--resolution", str(settings.resolution),
        "--context-dim", str(settings.context_dim), "--context-length", str(settings.context_length),
        "--device", str(settings.device), "--precision", settings.precision, "--memory-format", settings.memory_format,
    ], f"{side}/{model}", timeout)


def memory_row(model: str, settings) -> dict:
    from benchmarks.compare import compared

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # two fresh processes side by side: each reports its own peak
        futures = {side: pool.submit(measure_in_subprocess, side, model, settings.train_batch, settings)
                   for side in ("ours", "reference")}
        result = {side: future.result() for side, future in futures.items()}
    mib = {side: result[side]["peak_bytes"] / 2**20 for side in result}
    return compared("memory", model, "MiB (training step peak)", mib["ours"], mib["reference"], False,
                    batch=settings.train_batch, method=result["ours"]["method"], details=result)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("ours", "reference"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--context-dim", type=int, default=128)
    parser.add_argument("--context-length", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--memory-format", default="channels_last")
    args = parser.parse_args(argv)
    result = measure(args.side, args.model, args.batch, args.resolution, args.context_dim, args.context_length,
                     torch.device(args.device), args.precision, args.memory_format)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
