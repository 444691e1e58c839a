"""What the experiment scripts share: arguments, train-or-load, generation, probe readings, FID-by-probe and
the README they write (a markdown table + PNGs).

Every script takes the same core options:
  --steps N      training steps of each model it trains (default 2200: the default model's trainer.max_steps)
  --minutes M    a time cap on each training run (trainer.max_minutes); the lr schedule still spans --steps
  --ckpt PATH    reuse a trained toy-birds checkpoint where the experiment only samples
  --num N        images per setting
  --out DIR      where README.md, results.json and the PNGs go (default: experiments/<name>/)
  --smoke        a minute-long end-to-end check: a 16 px tiny model, a quick probe, a few images; writes to a
                 temporary --out unless one is given
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffusion.data.toybirds import ATTRIBUTES  # noqa: E402
from diffusion.tools.workbench import TINY, load_model, train_model  # noqa: E402

DEFAULT_STEPS = 2200  # conf/trainer/default.yaml's max_steps: the default model
SMOKE_STEPS = 30
SMOKE_PROBE_STEPS = 60


def parser(name: str, description: str, *, num: int = 256, trains: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python experiments/{name}/run.py", description=description)
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps per model (default {DEFAULT_STEPS}, the default model's; {SMOKE_STEPS} with --smoke)")
    p.add_argument("--minutes", type=float, default=None, help="time cap per training run")
    if not trains:
        p.add_argument("--ckpt", default=None, help="a trained toy-birds checkpoint to sample from (else one is trained)")
    p.add_argument("--num", type=int, default=num, help="images per setting")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ref-num", type=int, default=2000, help="reference images for FID-by-probe (cached)")
    p.add_argument("--out", type=Path, default=None, help=f"default: experiments/{name}/")
    p.add_argument("--work", type=Path, default=None, help=f"training runs go here (default: outputs/experiments/{name}/)")
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="tiny end-to-end check (a minute or two)")
    return p


class Context:
    """Parsed arguments plus the things every script needs: folders, device, probe, feature extractor."""

    def __init__(self, name: str, args):
        from diffusion.device import resolve_device

        self.name, self.args, self.smoke = name, args, args.smoke
        self.out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix=f"{name}-smoke-")) if args.smoke
                                                    else ROOT / "experiments" / name)
        self.work = Path(args.work) if args.work else (self.out / "runs" if args.smoke else ROOT / "outputs" / "experiments" / name)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(args.device)
        self.steps = args.steps or (SMOKE_STEPS if args.smoke else DEFAULT_STEPS)
        self.started = time.time()
        self._probes = {}

    def overrides(self, *extra: str) -> list[str]:
        """Training overrides: the TINY model in smoke mode, the defaults otherwise."""
        base = [o for o in TINY if not o.startswith("device=")] if self.smoke else ["trainer.sample_every=0"]
        return [*base, f"device={self.device.type}", *extra]

    def train(self, run: str, *extra: str):
        """Train one model in --work/<run>, or reuse it when a previous run finished there (a `done.json` marker),
        or resume it from its last checkpoint when one was interrupted. Returns (LoadedModel, seconds)."""
        run_dir = self.work / run
        final, done = run_dir / "checkpoints" / "last.ckpt", run_dir / "done.json"
        began = time.time()
        if done.is_file() and final.is_file():
            print(f"reusing {final} (delete {run_dir} to retrain)")
        else:
            resume = [f"resume={final}"] if final.is_file() else []
            train_model(run_dir, *self.overrides(*extra, *resume), steps=self.steps, minutes=self.args.minutes)
            done.write_text(json.dumps({"overrides": list(extra), "steps": self.steps, "minutes": self.args.minutes,
                                        "seconds": round(time.time() - began, 1)}) + "\n")
        return load_model(final, self.device), time.time() - began

    def model(self, *extra: str):
        """--ckpt when given, else a model trained with `extra` overrides."""
        if getattr(self.args, "ckpt", None):
            return load_model(self.args.ckpt, self.device)
        return self.train("model", *extra)[0]

    def probe(self, resolution: int):
        """The cached probe for `resolution` (trained once if missing); in smoke mode a quick one."""
        if resolution not in self._probes:
            from diffusion.evaluation.probe import load_probe, train_probe

            if self.smoke:
                self._probes[resolution] = train_probe(resolution, steps=SMOKE_PROBE_STEPS, batch_size=32,
                                                       held_out_images=100, progress=False)[0]
            else:
                self._probes[resolution] = load_probe(resolution)
        return self._probes[resolution]

    def extractor(self, resolution: int):
        from diffusion.evaluation.features import ProbeExtractor

        return ProbeExtractor(self.probe(resolution))

    def num(self, default_smoke: int = 8) -> int:
        return min(self.args.num, default_smoke) if self.smoke else self.args.num

    def ref_num(self) -> int:
        return 64 if self.smoke else self.args.ref_num

    def sampling_steps(self, steps: int) -> int:
        return min(steps, 5) if self.smoke else steps


def generate(ctx: Context, loaded, prompts: list[str], seeds: list[int] | None = None, **kwargs) -> tuple[torch.Tensor, float]:
    """Images [N, 3, H, W] for the prompts (seed i for image i unless given) and the wall time in seconds."""
    from diffusion.evaluation.score import generate as generate_batches

    seeds = seeds if seeds is not None else list(range(len(prompts)))
    began = time.time()
    images = [batch for _, batch in generate_batches(loaded, prompts, seeds, batch_size=ctx.args.batch_size,
                                                     device=ctx.device, **kwargs)]
    return torch.cat(images), time.time() - began


def read_attributes(ctx: Context, images: torch.Tensor, resolution: int) -> list[dict]:
    from diffusion.evaluation.probe import predict

    return predict(ctx.probe(resolution), images)


def adherence(readings: list[dict], prompted: list[dict]) -> dict[str, float]:
    from diffusion.evaluation.score import adherence_from_predictions

    return adherence_from_predictions(readings, prompted)


def mean_adherence(scores: dict[str, float]) -> float:
    return sum(scores.values()) / max(len(scores), 1)


def fid_by_probe(ctx: Context, images: torch.Tensor, resolution: int) -> dict:
    """FID and KID of the images' probe features against the cached toy-birds reference."""
    from diffusion.evaluation.score import quality, toybirds_reference

    extractor = ctx.extractor(resolution)
    reference = toybirds_reference(extractor, resolution, ctx.ref_num(), cache_dir=ctx.work / "cache" if ctx.smoke else None)
    return quality(extractor(images), reference, kid_subsets=20 if ctx.smoke else 100, kid_subset_size=1000)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value):
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(ctx: Context, title: str, question: str, method: str, table: str, figures: list[str],
                 results: dict, findings: str = "") -> Path:
    """README.md (question, method, command, table, figures) and results.json in --out."""
    script = Path(sys.argv[0]).resolve()
    script = script.relative_to(ROOT) if script.is_relative_to(ROOT) else Path(f"experiments/{ctx.name}/run.py")
    command = "python " + " ".join([str(script), *sys.argv[1:]])
    minutes = (time.time() - ctx.started) / 60
    smoke = ("\n> **Smoke run** (tiny 16 px model, a few images): checks the pipeline end to end; "
             "the numbers mean nothing.\n" if ctx.smoke else "")
    text = "\n".join([
        f"# {title}", smoke, f"**Question.** {question}", "", f"**Method.** {method}", "",
        f"Command: `{command}` ({minutes:.1f} min on {ctx.device.type}, {torch.get_num_threads()} thread(s)).", "",
        "## Results", "", table, "", *[f"![{Path(f).stem}]({f})" for f in figures], "",
        *(["## Findings", "", findings, ""] if findings else []),
    ])
    path = ctx.out / "README.md"
    path.write_text(text)
    (ctx.out / "results.json").write_text(json.dumps({"command": command, "minutes": round(minutes, 2),
                                                      "smoke": ctx.smoke, **results}, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    return path


def save_rows(ctx: Context, rows: list[torch.Tensor], name: str, columns: int) -> str:
    """Stack image rows into one PNG grid in --out (enlarged 3x); returns its file name."""
    from diffusion.tools.inspection import save_grid

    save_grid(torch.cat(rows), ctx.out / name, columns=columns, scale=3)
    return name


def colour_shares(readings: list[dict], attribute: str = "body_colour") -> dict[str, float]:
    counts = {value: 0 for value in ATTRIBUTES[attribute]}
    for reading in readings:
        counts[reading[attribute]] += 1
    return {value: count / max(len(readings), 1) for value, count in counts.items()}
