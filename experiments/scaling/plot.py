"""The scaling study's plot and tables, from every round's table (experiments/scaling/results_<MINUTES>min.json).

    .venv/bin/python experiments/scaling/plot.py          # writes experiments/scaling/scaling.png, prints the tables

Four panels: the final training loss and the mean probe adherence of each run, against its training FLOPs (log x)
and against its CPU-minutes (the budget every run of a round shares). One line per run (a size of one backbone)
through its rounds: UNet solid, DiT dashed. The printed tables are the README's: every run of every round, and per
round the best UNet beside the best DiT.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def rounds(folder: Path = HERE) -> dict[float, list[dict]]:
    """{budget in CPU-minutes: the round's rows}, from results_<MINUTES>min.json, smallest budget first."""
    found = {}
    for path in folder.glob("results_*min.json"):
        minutes = re.fullmatch(r"results_([0-9.]+)min\.json", path.name)
        if minutes:
            found[float(minutes.group(1))] = json.loads(path.read_text())
    if not found:
        sys.exit(f"no results_<MINUTES>min.json in {folder}: run experiments/scaling/run.sh MINUTES first")
    return dict(sorted(found.items()))


def runs(by_budget: dict[float, list[dict]]) -> dict[str, list[tuple[float, dict]]]:
    """{run name: [(budget, row), ...]} across rounds, budgets ascending."""
    lines: dict[str, list[tuple[float, dict]]] = {}
    for minutes, rows in by_budget.items():
        for row in rows:
            lines.setdefault(row["name"], []).append((minutes, row))
    return lines


def plot(by_budget: dict[float, list[dict]], path: Path) -> None:
    lines = runs(by_budget)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey="row")
    unet_colours = iter(plt.cm.Blues([0.45, 0.7, 0.95]))
    dit_colours = iter(plt.cm.Oranges([0.45, 0.7, 0.95]))
    for name, points in sorted(lines.items(), key=lambda item: (item[1][0][1]["model"], item[1][0][1]["parameters"])):
        is_unet = points[0][1]["model"] == "UNet"
        style = dict(
            linestyle="-" if is_unet else "--", marker="o" if is_unet else "s",
            color=next(unet_colours if is_unet else dit_colours, "grey"),
            label=f"{name} ({points[0][1]['parameters'] / 1e6:.2f}M)",
        )
        flops = [row["cost"]["train_flops"] for _, row in points]
        minutes = [row["cost"]["device_seconds"] / 60 for _, row in points]
        loss = [row["loss"] for _, row in points]
        adherence = [100 * row["evaluation"]["adherence_mean"] for _, row in points]
        axes[0, 0].plot(flops, loss, **style)
        axes[1, 0].plot(flops, adherence, **style)
        axes[0, 1].plot(minutes, loss, **style)
        axes[1, 1].plot(minutes, adherence, **style)
    for ax in axes[:, 0]:
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
    for ax in axes[:, 1]:
        ax.set_xscale("log")
        ax.set_xlabel("training CPU-minutes (one thread)")
        ax.set_xticks(list(by_budget), [f"{m:g}" for m in by_budget])
        ax.minorticks_off()
    for ax in axes[0]:
        ax.set_yscale("log")
    axes[0, 0].set_ylabel("final training loss (v, min-SNR weighted)")
    axes[1, 0].set_ylabel("probe adherence, mean of 7 attributes (%)")
    for ax in axes.flat:
        ax.grid(alpha=0.3, which="both")
    axes[0, 1].legend(fontsize=8)
    fig.suptitle("UNet (solid) vs DiT (dashed) on toy-birds 32px: quality against compute")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def tables(by_budget: dict[float, list[dict]]) -> str:
    out = ["| CPU-min | run | params | steps | train TFLOP | loss | adherence | FID (probe) |",
           "|---|---|---|---|---|---|---|---|"]
    for minutes, rows in by_budget.items():
        for row in rows:
            out.append(
                f"| {minutes:g} | {row['name']} | {row['parameters'] / 1e6:.2f}M | {row['step']} "
                f"| {row['cost']['train_flops'] / 1e12:.1f} | {row['loss']:.4f} "
                f"| {100 * row['evaluation']['adherence_mean']:.1f}% | {row['evaluation']['fid']:.0f} |")
    out += ["", "| CPU-min | best UNet (adherence) | best DiT (adherence) | UNet - DiT | "
            "best UNet loss / best DiT loss |", "|---|---|---|---|---|"]
    for minutes, rows in by_budget.items():
        best = {}
        for kind in ("UNet", "DiT"):
            of_kind = [r for r in rows if r["model"] == kind]
            if of_kind:
                best[kind] = max(of_kind, key=lambda r: r["evaluation"]["adherence_mean"])
                best[kind + " loss"] = min(r["loss"] for r in of_kind)
        if len(best) == 4:
            u, d = best["UNet"], best["DiT"]
            out.append(
                f"| {minutes:g} | {u['name']} {100 * u['evaluation']['adherence_mean']:.1f}% "
                f"| {d['name']} {100 * d['evaluation']['adherence_mean']:.1f}% "
                f"| {100 * (u['evaluation']['adherence_mean'] - d['evaluation']['adherence_mean']):+.1f} pp "
                f"| {best['UNet loss'] / best['DiT loss']:.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    by_budget = rounds()
    plot(by_budget, HERE / "scaling.png")
    print(tables(by_budget))
