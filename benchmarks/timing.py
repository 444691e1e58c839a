"""Interleaved timing, the machine's description, and the peak FLOP rates used for utilisation."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(functions: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device) -> dict:
    """Seconds per call of each function, timed in turns (a, b, a, b, ...) after `warmup` untimed turns,
    so that a slow phase of the machine hits every side alike."""
    for _ in range(warmup):
        for function in functions.values():
            function()
            synchronize(device)
    seconds = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median(values) -> float:
    return float(statistics.median(values))


def spread(values) -> float:
    """(max - min) / median: how steady the repeats were."""
    return float((max(values) - min(values)) / statistics.median(values)) if values else 0.0


class Stopwatch:
    """Wraps a callable and adds up the time spent inside it (synchronised on CUDA)."""

    def __init__(self, function: Callable, device: torch.device):
        self.function, self.device, self.seconds, self.calls = function, device, 0.0, 0

    def __call__(self, *args, **kwargs):
        synchronize(self.device)
        start = time.perf_counter()
        out = self.function(*args, **kwargs)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


# ---------------------------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def device_slug(device: torch.device) -> str:
    """A file name for the results: cpu-<cpu model short> or cuda-<gpu name>."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        name = re.sub(r"^NVIDIA\s+", "", name)
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    name = re.sub(r"\((R|TM)\)|CPU|Processor|@.*$", "", cpu_model(), flags=re.IGNORECASE)
    return "cpu-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def machine_info(device: torch.device) -> dict:
    import diffusers

    info = {"device": str(device), "cpu_model": cpu_model(), "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version(), "load_average_before": load_average()}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets. Utilisation is only reported for
# these; an unknown device (or any CPU) gets none rather than a guess.
PEAK_BF16_FLOPS = [
    # (pattern in torch.cuda.get_device_name, peak FLOP/s, source)
    (r"H100.*(HBM3|SXM)", 989.4e12, "NVIDIA H100 Tensor Core GPU data sheet, SXM: 1,979 TFLOPS bf16 with sparsity = 989.4 dense"),
    (r"H200", 989.4e12, "NVIDIA H200 Tensor Core GPU data sheet, SXM: 1,979 TFLOPS bf16 with sparsity = 989.4 dense"),
    (r"H100.*PCIe", 756.0e12, "NVIDIA H100 Tensor Core GPU data sheet, PCIe: 1,513 TFLOPS bf16 with sparsity = 756 dense"),
    (r"A100", 312.0e12, "NVIDIA A100 Tensor Core GPU data sheet: 312 TFLOPS bf16 dense"),
]


def peak_flops(device: torch.device, precision: str) -> tuple[float, str] | None:
    """(peak FLOP/s, source) for bf16 on a known GPU; None otherwise (fp32 and CPUs are not reported)."""
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    for pattern, peak, source in PEAK_BF16_FLOPS:
        if re.search(pattern, name):
            return peak, source
    return None
