"""The table of a seeds round (experiments/scaling/seeds.sh): for each run name, the mean over training seeds with its
95% t-interval of the final loss, mean adherence and FID-by-probe, and each pair of runs' differences paired seed by
seed (same seed: the same data order and caption dropout draws).

    python experiments/scaling/seeds.py outputs/scaling/seeds_10min --json seeds_10min.json --table seeds_10min.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from diffusion.evaluation.cost import final_loss  # noqa: E402
from diffusion.evaluation.intervals import seed_summary, summary_text  # noqa: E402

RUN = re.compile(r"^(?P<name>.+)_s(?P<seed>\d+)$")


def read_round(folder: Path) -> dict[str, dict[int, dict]]:
    """name -> seed -> {step, loss, adherence_mean, fid, parameters} for every evaluated run in the folder."""
    from diffusion.checkpoint import load_checkpoint

    runs: dict[str, dict[int, dict]] = {}
    for run_dir in sorted(p for p in folder.iterdir() if p.is_dir() and RUN.match(p.name)):
        evaluation = run_dir / "eval" / "evaluation.json"
        if not evaluation.is_file():
            print(f"{run_dir}: no eval/evaluation.json, left out", file=sys.stderr)
            continue
        result = json.loads(evaluation.read_text())
        payload = load_checkpoint(run_dir / "checkpoints" / "last.ckpt", kind="diffusion")
        parameters = sum(v.numel() for k, v in payload["model"].items() if k.startswith("denoiser."))
        match = RUN.match(run_dir.name)
        runs.setdefault(match["name"], {})[int(match["seed"])] = {
            "step": int(payload["step"]), "loss": final_loss(run_dir), "adherence_mean": result["adherence_mean"],
            "adherence_mean_interval": result.get("adherence_mean_interval"), "fid": result["fid"],
            "parameters": parameters, "train_flops": (payload.get("cost") or {}).get("train_flops")}
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="outputs/scaling/seeds_<ROUND>")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--table", type=Path, default=None)
    p.add_argument("--runs", nargs="+", default=None, help="the run names in table order (default: all, by name); "
                                                          "differences are earlier minus later")
    args = p.parse_args()
    if not args.folder.is_dir():
        sys.exit(f"error: {args.folder} is not a folder; give the seeds round's folder (outputs/scaling/seeds_<ROUND>)")
    runs = read_round(args.folder)
    if args.runs:
        missing = [name for name in args.runs if name not in runs]
        if missing:
            sys.exit(f"error: --runs {' '.join(missing)}: no evaluated run of that name in {args.folder}; "
                     f"use {' | '.join(runs) or 'experiments/scaling/seeds.sh first'}")
        runs = {name: runs[name] for name in args.runs}
    if not runs:
        sys.exit(f"error: {args.folder} holds no evaluated <run>_s<seed> runs; run experiments/scaling/seeds.sh first")
    keys = ("loss", "adherence_mean", "fid")
    summaries = {name: {"seeds": sorted(by_seed), "step": sorted({r["step"] for r in by_seed.values()}),
                        "parameters": next(iter(by_seed.values()))["parameters"],
                        **{k: seed_summary([by_seed[s][k] for s in sorted(by_seed)]) for k in keys}}
                 for name, by_seed in runs.items()}
    lines = ["| run | parameters | steps | seeds | final loss [95%] | mean adherence [95%] | FID-by-probe [95%] |",
             "|---|---:|---:|---|---|---|---|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | {s['parameters'] / 1e6:.2f}M | {'/'.join(map(str, s['step']))} | "
                     f"{', '.join(map(str, s['seeds']))} | {summary_text(s['loss'], digits=4)} | "
                     f"{summary_text(s['adherence_mean'], 100)}% | {summary_text(s['fid'], digits=0)} |")
    differences = []
    for a, b in itertools.combinations(runs, 2):
        shared = sorted(set(runs[a]) & set(runs[b]))
        if len(shared) < 2:
            continue
        paired = {k: seed_summary([runs[a][s][k] - runs[b][s][k] for s in shared]) for k in keys}
        differences.append({"a": a, "b": b, "seeds": shared, **paired})
    if differences:
        lines += ["", "| paired by seed: a minus b | loss [95%] | mean adherence, points [95%] | FID-by-probe [95%] |",
                  "|---|---|---|---|"]
        for d in differences:
            lines.append(f"| {d['a']} minus {d['b']} | {summary_text(d['loss'], digits=4)} | "
                         f"{summary_text(d['adherence_mean'], 100)} | {summary_text(d['fid'], digits=0)} |")
    table = "\n".join(lines)
    print(table)
    if args.table:
        args.table.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps({"folder": str(args.folder), "runs": runs, "summaries": summaries,
                                         "differences": differences}, indent=1) + "\n")


if __name__ == "__main__":
    main()
