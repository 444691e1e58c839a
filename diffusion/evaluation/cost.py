"""Cost and quality of training runs, side by side: a table and a bar chart.

    python -m diffusion.evaluation.cost outputs/2026-12-06/10-00-00 outputs/2026-12-06/11-00-00
    python -m diffusion.evaluation.cost outputs/*/* --chart cost.png --json cost.json

Each argument is a run directory (its checkpoints/last.ckpt) or a checkpoint file. Cost comes from the
checkpoint's "cost" (what the training loop accounted: FLOPs, device-seconds, energy with its label);
quality and the cost of one sampled image from the newest evaluation.json under the run directory
(written by `python -m diffusion.evaluation --ckpt <run>/checkpoints/last.ckpt --out <run>/eval`); the final training
loss from the run's metrics.jsonl (its last full log window: comparable between runs of one objective and weighting).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from diffusion.cost import energy_words, si
from diffusion.errors import UserError, writing


def find_checkpoint(path: Path) -> Path:
    if path.is_file():
        return path
    if (path / "checkpoints" / "last.ckpt").is_file():
        return path / "checkpoints" / "last.ckpt"
    if (path / "last.ckpt").is_file():
        return path / "last.ckpt"
    raise UserError(f"{path} is neither a checkpoint nor a run directory with checkpoints/last.ckpt; give a run "
                    f"directory that train.py wrote (outputs/<date>/<time>)")


def final_loss(run_dir: Path) -> float | None:
    """The mean training loss of the run's last full log window in metrics.jsonl (the closing line of a run that
    stopped between windows averages fewer steps, so it is passed over when a full window came before it)."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    lines = []
    for text in metrics.read_text().splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:  # a line cut short by a crash: the rest of the log still counts
            continue
        if isinstance(line, dict) and isinstance(line.get("loss"), (int, float)) and isinstance(line.get("step"), int):
            lines.append(line)
    if not lines:
        return None
    steps = [line["step"] for line in lines]
    gaps = [b - a for a, b in zip(steps, steps[1:]) if b > a]
    window = max(set(gaps), key=gaps.count) if gaps else None  # the log interval: the most common gap
    full = [line for line, previous in zip(lines[1:], steps) if line["step"] - previous == window]
    return float((full or lines)[-1]["loss"])


def run_row(path: Path) -> dict:
    """One run's cost (from its checkpoint) and quality (from its evaluation.json, when there is one)."""
    from omegaconf import OmegaConf

    from diffusion.checkpoint import load_checkpoint
    from diffusion.config import objective_for
    from diffusion.model import legacy_keys

    checkpoint = find_checkpoint(path)
    payload = load_checkpoint(checkpoint, kind="diffusion")  # every way it can be wrong is one UserError
    config = OmegaConf.create(payload["config"])
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    denoiser_weights = sum(v.numel() for k, v in legacy_keys(payload["model"]).items() if k.startswith("denoiser."))
    row = {"run": str(path), "name": run_dir.name, "model": str(config.model._target_).rsplit(".", 1)[-1],
           "objective": objective_for(config).name, "parameters": int(denoiser_weights),
           "step": int(payload["step"]), "loss": final_loss(run_dir), "cost": payload.get("cost")}
    evaluations = sorted(run_dir.rglob("evaluation.json"), key=lambda p: p.stat().st_mtime)
    if evaluations:
        result = json.loads(evaluations[-1].read_text())
        adherence = result.get("adherence") or {}
        row["evaluation"] = {"file": str(evaluations[-1]), "fid": result.get("fid"), "extractor": result.get("extractor"),
                             "adherence_mean": sum(adherence.values()) / len(adherence) if adherence else None,
                             "adherence": adherence, "num_images": result.get("num_images"),
                             "ckpt_step": result.get("ckpt_step"), "cost_per_image": result.get("cost_per_image")}
    return row


def label(source: str | None) -> str:
    """"estimated (20 W: ...)" -> "estimated"; "measured (RAPL)" -> "measured"; "mixed: ..." -> "mixed"."""
    return (source or "?").split(" (")[0].split(":")[0]


def table(rows: list[dict]) -> str:
    lines = ["| run | model | steps | final loss | images seen | training FLOPs | device-hours | training energy | "
             "FLOPs / image sampled | energy / image sampled | adherence | FID |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    dash = "—"
    for row in rows:
        cost, evaluation = row["cost"], row.get("evaluation") or {}
        sample = evaluation.get("cost_per_image") or {}
        cells = [row["run"], f"{row['model']} {row['parameters'] / 1e6:.2f}M ({row['objective']})", f"{row['step']:,}",
                 f"{row['loss']:.4g}" if row.get("loss") is not None else dash]
        if cost:
            cells += [f"{cost['images_seen']:,}", si(cost["train_flops"], "FLOP"), f"{cost['device_seconds'] / 3600:.3g}",
                      f"{energy_words(cost['energy_j'])} {label(cost['energy_source'])}"]
        else:
            cells += [dash, dash, dash, "not recorded (trained before cost accounting)"]
        cells += [si(sample["flops"], "FLOP") if sample else dash,
                  f"{energy_words(sample['energy_j'])} {label(sample['energy_source'])}" if sample else dash,
                  f"{evaluation['adherence_mean']:.1%}" if evaluation.get("adherence_mean") is not None else dash,
                  f"{evaluation['fid']:.1f}" if evaluation.get("fid") is not None else dash]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(rows: list[dict], path: Path) -> None:
    """Three bar panels per run: training FLOPs, training energy (hatched = estimated), adherence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["name"] for row in rows]
    costs = [row["cost"] or {} for row in rows]
    figure, axes = plt.subplots(1, 3, figsize=(max(10.0, 3 * 1.0 * len(rows) + 4), 3.8))
    positions = range(len(rows))
    axes[0].bar(positions, [c.get("train_flops", 0) / 1e15 for c in costs], color="tab:blue")
    axes[0].set_title("training compute (PFLOP)", fontsize=10)
    bars = axes[1].bar(positions, [c.get("energy_j", 0) / 3.6e3 for c in costs], color="tab:orange")
    for bar, c in zip(bars, costs):
        if c.get("energy_source", "").startswith("estimated"):
            bar.set_hatch("//")
    axes[1].set_title("training energy (Wh)\nhatched: estimated", fontsize=10)
    adherence = [(row.get("evaluation") or {}).get("adherence_mean") for row in rows]
    axes[2].bar(positions, [100 * a if a is not None else 0 for a in adherence], color="tab:green")
    axes[2].set_ylim(0, 100)
    axes[2].set_title("prompt adherence (%)", fontsize=10)
    for axis in axes:
        axis.set_xticks(list(positions), names, rotation=30, ha="right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def default_chart(runs: list[Path]) -> Path:
    """cost.png beside the runs (their common folder), never the working directory unannounced."""
    folders = [(path if path.is_dir() else path.parent).resolve() for path in runs]
    return Path(os.path.commonpath([str(f) for f in folders])) / "cost.png"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion.evaluation.cost", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (outputs/<date>/<time>) or checkpoint files")
    parser.add_argument("--chart", type=Path, default=None, help="the bar chart to write (default: cost.png in the runs' "
                                                                 "common folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing chart or JSON file")
    args = parser.parse_args(argv)
    try:
        rows = [run_row(path) for path in args.runs]
        args.chart = args.chart or default_chart(args.runs)
        if args.chart.is_dir():
            raise UserError(f"--chart {args.chart} is a directory; give a file name such as cost.png")
        for path in (args.chart, args.json):
            if path is not None and path.exists() and not args.overwrite:
                raise UserError(f"{path} already exists; add --overwrite to replace it, or give another name "
                                f"(nothing was written)")
        print(table(rows))
        with writing(args.chart):
            chart(rows, args.chart)
        print(f"wrote {args.chart}")
        if args.json:
            with writing(args.json):
                args.json.write_text(json.dumps(rows, indent=1) + "\n")
            print(f"wrote {args.json}")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

if __name__ == "__main__":
    main()
