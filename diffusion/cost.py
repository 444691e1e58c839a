"""What a run costs: FLOPs, device-seconds, images seen, and energy.

    FLOPs      torch.utils.flop_counter.FlopCounterMode (2 FLOPs per multiply-add; matmuls, convolutions and
               attention; elementwise work is not counted, as in every published model FLOP figure).
               Training: one micro-batch's forward + backward is counted once per run and scaled by the
               images seen. Sampling: the first call of each network (text encoder, denoiser, decoder) is
               counted and every later call adds the same.
    energy     measured where the machine exposes a counter: RAPL (/sys/class/powercap, CPU package, the
               whole socket) or NVML (`nvidia-ml-py`, the GPU board's total energy counter); else estimated
               as power x seconds from `cost.power_watts` (null: the GPU's NVML power limit, else 10 W per
               CPU thread in use). Every figure carries its label: "measured (RAPL)", "estimated (20 W)".

A kilowatt-hour is 3.6e6 joules.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

WATTS_PER_CPU_THREAD = 10.0  # the estimate when nothing is measured and cost.power_watts is null
RAPL_ROOT = Path("/sys/class/powercap")


# ---------------------------------------------------------------------------------------------- FLOPs


def count_flops(function: Callable[[], object]) -> tuple[int, object]:
    """(FLOPs of one call, its result). The counter only watches: the call computes what it would
    uncounted (same kernels, same numbers)."""
    from torch.utils.flop_counter import FlopCounterMode

    count_cpu_attention()
    with FlopCounterMode(display=False) as counter:
        result = function()
    return int(counter.get_total_flops()), result


def count_cpu_attention() -> None:
    """Teach the counter SDPA's fused CPU kernel (torch counts the CUDA kernels, not this one):
    forward 4 B h L S d (QK^T and the weighted sum of V), backward 2.5 times that (five matmuls), by torch's
    own formulas for the CUDA kernels."""
    from torch.utils import flop_counter

    aten = torch.ops.aten
    forward, backward = aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention_for_cpu_backward
    if forward in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(forward)
    def _forward(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


class FlopTally:
    """FLOPs of repeated calls: the first call of each wrapped function is counted, later calls add the
    same (the same shapes every call, as in a sampling loop). `total` is the sum. Disabled, it wraps nothing."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.per_call: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, function: Callable) -> Callable:
        if not self.enabled:
            return function

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            if name in self.per_call:
                return function(*args, **kwargs)
            flops, result = count_flops(lambda: function(*args, **kwargs))
            self.per_call[name] = flops
            return result

        return counted

    @property
    def total(self) -> int:
        return sum(self.per_call[name] * self.calls[name] for name in self.per_call)


# ---------------------------------------------------------------------------------------------- energy


def check_power_watts(cfg) -> None:
    """cost.power_watts: null, or a number of watts > 0."""
    from diffusion.errors import UserError

    watts = cfg.get("cost", {}).get("power_watts")
    if watts is not None and not (isinstance(watts, (int, float)) and not isinstance(watts, bool) and watts > 0):
        raise UserError(f"cost.power_watts must be a number of watts > 0 (or null: measure, else estimate), got {watts!r}")


class EnergyMeter:
    """Joules since `start()`: measured by RAPL (CPU) or NVML (CUDA) when readable, else power x time.

    `source` says which: "measured (RAPL)", "measured (NVML)" or "estimated (<W> W ...)"."""

    def __init__(self, device: torch.device | str = "cpu", power_watts: float | None = None):
        device = torch.device(device)
        self.device = device
        self.read_counter, self.source = None, None
        if power_watts is None:  # a configured figure means: estimate with it, even where a counter exists
            self.read_counter, self.source = (nvml_counter(device) if device.type == "cuda" else rapl_counter())
        if self.read_counter is None:
            self.watts, why = (float(power_watts), "cost.power_watts") if power_watts is not None else default_power(device)
            self.source = f"estimated ({self.watts:g} W: {why})"
        self.start()

    @property
    def measured(self) -> bool:
        return self.read_counter is not None

    def start(self) -> None:
        self.started = time.perf_counter()
        self.first = self.read_counter() if self.read_counter else 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def joules(self) -> float:
        if self.read_counter is None:
            return self.watts * self.seconds()
        return self.read_counter() - self.first


def default_power(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            return pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000, "the GPU's NVML power limit"
        except Exception:  # no NVML here: a typical data-centre GPU board
            return 300.0, "a typical GPU board; set cost.power_watts"
    threads = torch.get_num_threads()
    return WATTS_PER_CPU_THREAD * threads, f"{WATTS_PER_CPU_THREAD:g} W per CPU thread x {threads}; set cost.power_watts"


def rapl_counter(root: Path = RAPL_ROOT):
    """A reader of the CPU packages' energy in joules (RAPL, summed over sockets, counter wrap-around
    handled), or (None, None) when the counters are absent or not readable (often root-only)."""
    domains = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1) if root.is_dir() else []
    try:
        ranges = [int((d / "max_energy_range_uj").read_text()) for d in domains]
        for d in domains:
            int((d / "energy_uj").read_text())
    except (OSError, ValueError):
        return None, None
    if not domains:
        return None, None
    last = [int((d / "energy_uj").read_text()) for d in domains]
    total = [0.0]

    def read() -> float:
        for i, d in enumerate(domains):
            now = int((d / "energy_uj").read_text())
            total[0] += (now - last[i]) % (ranges[i] + 1)  # a counter that wrapped keeps counting from 0
            last[i] = now
        return total[0] / 1e6

    return read, "measured (RAPL)"


def nvml_counter(device: torch.device):
    """A reader of the GPU's total energy in joules (NVML, Volta and later), or (None, None)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index if device.index is not None else torch.cuda.current_device())
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception:
        return None, None
    return (lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000), "measured (NVML)"


# ---------------------------------------------------------------------------------------------- a training run


class RunCost:
    """The running totals of one training run, carried across resumes in the checkpoint's "cost".

        train FLOPs    = FLOPs per trained image (one micro-batch counted) x images seen
        device-seconds = wall seconds x processes (one device each)
        energy         = the main process's meter, x processes for per-device meters (NVML, estimates);
                         RAPL already measures the whole socket every CPU process shares"""

    def __init__(self, flops_per_image: float, device, world_size: int = 1, power_watts: float | None = None,
                 before: dict | None = None):
        self.flops_per_image, self.world_size = float(flops_per_image), int(world_size)
        self.meter = EnergyMeter(device, power_watts)
        self.scale = 1 if "RAPL" in self.meter.source else self.world_size
        self.before = dict(before or {})
        self.device_name = device_name(torch.device(device))

    def totals(self, images_seen: int) -> dict:
        before = self.before
        source = self.meter.source
        if before.get("energy_source") and before["energy_source"] != source:
            source = f"mixed: {before['energy_source']} then {source}"
        return {
            "train_flops": self.flops_per_image * images_seen,
            "train_flops_per_image": self.flops_per_image,
            "images_seen": int(images_seen),
            "device_seconds": float(before.get("device_seconds", 0.0)) + self.meter.seconds() * self.world_size,
            "energy_j": float(before.get("energy_j", 0.0)) + self.meter.joules() * self.scale,
            "energy_source": source,
            "devices": self.world_size,
            "device": self.device_name,
        }

    @staticmethod
    def line(totals: dict) -> str:
        return (f"cost: {si(totals['train_flops'], 'FLOP')} training compute "
                f"({si(totals['train_flops_per_image'], 'FLOP')} per image x {totals['images_seen']:,} images seen), "
                f"{seconds_words(totals['device_seconds'])} device-seconds on {totals['devices']} x {totals['device']}, "
                f"{energy_words(totals['energy_j'])} {totals['energy_source']}")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    import platform

    return f"{platform.processor() or 'CPU'} ({torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------------------------- words


def si(value: float, unit: str) -> str:
    """1.23e15, "FLOP" -> "1.23 PFLOP"."""
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def seconds_words(seconds: float) -> str:
    return f"{seconds:,.0f}" if seconds >= 100 else f"{seconds:.3g}"


def energy_words(joules: float) -> str:
    return f"{si(joules, 'J')} ({joules / 3.6e6:.3g} kWh)" if joules >= 3.6e5 else si(joules, "J")


__all__ = ["count_flops", "FlopTally", "EnergyMeter", "RunCost", "device_name", "rapl_counter", "nvml_counter", "si", "energy_words"]
