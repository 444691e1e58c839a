"""Few-step generation: prompt adherence and FID-by-probe at 1, 2, 4 and 8 network evaluations for DDIM,
DPM-Solver++(2M), UniPC and a consistency student, beside the teacher's 25-step DDIM; mean and 95% interval over seeds.

    python experiments/few_step/run.py --teacher <demo last.ckpt> --student <task=distill last.ckpt> --num 64
    python experiments/few_step/run.py ... --row meanflow=<meanflow last.ckpt>:meanflow@3   # any further model
    python experiments/few_step/run.py --smoke --teacher ... --student ...

Every setting is scored as `python -m diffusion.evaluation --seeds 0 1 2` scores a checkpoint (diffusion/evaluation/
score.py `evaluate`: the test-split prompts, image i with seed base + i, bootstrap intervals over images), then the
mean and the t-interval over the seeds (intervals.seed_summary). NFE = network evaluations = sampler steps for every
row here (a guided evaluation is one batched pass over [uncond; cond]: its FLOPs, in the table, are twice a student's).
Cost per image is the evaluation's own accounting (diffusion/cost.py: counted FLOPs; energy measured by RAPL where the
machine has it, else estimated from time); the distillation's cost comes from the student checkpoint's "cost".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from diffusion.evaluation.intervals import summary_text  # noqa: E402

NFES = (1, 2, 4, 8)
SOLVERS = ("ddim", "dpmpp_2m", "unipc")  # the teacher's multistep solvers, guided at --guidance-scale
BASELINE = ("teacher", "ddim", 25)  # the 25-step teacher every row is compared with
TARGETS = {2: 5.0, 1: 10.0}  # student steps -> allowed adherence gap to the baseline, in points (issue 33)
ENERGY_TARGET = 10.0  # the student's energy per image at least this many times below the baseline's


def arguments(argv=None):
    p = argparse.ArgumentParser(prog="python experiments/few_step/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="the trained model the solvers sample (the demo checkpoint)")
    p.add_argument("--student", default=None, help="a consistency student of --teacher (python train.py task=distill)")
    p.add_argument("--row", action="append", default=[], metavar="NAME=CKPT:SAMPLER",
                   help="a further (checkpoint, sampler) row, sampled at the same NFEs, e.g. meanflow=<ckpt>:meanflow "
                        "(SAMPLER is a conf/sampler/ name, or `own` for the checkpoint's own sampler); repeatable")
    p.add_argument("--nfes", type=int, nargs="+", default=list(NFES))
    p.add_argument("--num", type=int, default=64, help="images per setting and seed (one per test-split prompt)")
    p.add_argument("--ref-num", type=int, default=1000, help="reference renders for FID-by-probe (cached)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1000, 2000],
                   help="base sampling seeds (image i: base + i; far apart so no start noise is shared)")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="the teacher's classifier-free guidance")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--fid-resamples", type=int, default=50)
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "few_step")
    p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "experiments" / "few_step",
                   help="each setting's scores are kept here and reused by a later run with the same settings (add rows "
                        "without recomputing the others)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="2 NFEs, 8 images, 2 seeds: checks the pipeline end to end")
    return p.parse_args(argv)


def parse_row(text: str) -> tuple[str, str, str, float]:
    """NAME=CKPT:SAMPLER[@SCALE] -> (name, checkpoint, sampler, guidance scale; 1 when not given)."""
    from diffusion.errors import UserError

    name, equals, rest = text.partition("=")
    rest, at, scale = rest.rpartition("@") if "@" in rest.rpartition(":")[2] else (rest, "", "1")
    ckpt, colon, sampler = rest.rpartition(":")
    try:
        scale = float(scale)
    except ValueError:
        scale = None
    if not (equals and colon and name and ckpt and sampler and scale is not None):
        raise UserError(f"--row {text!r}: write NAME=CKPT:SAMPLER or NAME=CKPT:SAMPLER@SCALE, e.g. "
                        f"meanflow=outputs/.../last.ckpt:meanflow@3")
    return name, ckpt, sampler, scale


def settings(args) -> list[tuple[str, str, str | None, int, float]]:
    """(row name, checkpoint, sampler config name or None for the checkpoint's own, steps, guidance scale)."""
    nfes = args.nfes[:2] if args.smoke else args.nfes
    rows = [(BASELINE[0], args.teacher, BASELINE[1], BASELINE[2], args.guidance_scale)]
    if args.student:
        rows += [("consistency", args.student, None, nfe, 1.0) for nfe in nfes]  # guidance is distilled in
    for text in args.row:
        name, ckpt, sampler, scale = parse_row(text)
        rows += [(name, ckpt, None if sampler == "own" else sampler, nfe, scale) for nfe in nfes]
    return rows + [(solver, args.teacher, solver, nfe, args.guidance_scale) for solver in SOLVERS for nfe in nfes]


def score(loaded, sampler: str | None, steps: int, scale: float, args, probe, extractor) -> dict:
    """One setting over every seed: each seed's evaluation, then the mean and t-interval over seeds."""
    from diffusion.evaluation.intervals import seed_summary
    from diffusion.evaluation.score import evaluate, sampler_config

    per_seed = [evaluate(loaded, extractor, num=args.num, ref_num=args.ref_num, steps=steps, guidance_scale=scale,
                         sampler_cfg=sampler_config(sampler), batch_size=args.batch_size, seed=seed, device=args.device,
                         probe=probe, keep_images=8 if seed == args.seeds[0] else 0, progress=False,
                         fid_resamples=args.fid_resamples, cache_dir=args.cache / "fid-stats" if args.smoke else None)
                for seed in args.seeds]
    summary = {key: seed_summary([r[key] for r in per_seed]) for key in ("adherence_mean", "fid")}
    cost = {key: sum(r["cost_per_image"][key] for r in per_seed) / len(per_seed) for key in ("flops", "seconds", "energy_j")}
    return {"adherence_mean": summary["adherence_mean"], "fid": summary["fid"],
            "adherence": {k: sum(r["adherence"][k] for r in per_seed) / len(per_seed) for k in per_seed[0]["adherence"]},
            "cost_per_image": {**cost, "energy_source": per_seed[0]["cost_per_image"]["energy_source"]},
            "images": per_seed[0]["images"],
            "per_seed": [{k: v for k, v in r.items() if k not in ("images", "prompts")} for r in per_seed]}


def cached_score(key: dict, cache: Path, compute) -> dict:
    """`compute()`'s result for `key` (checkpoint file, sampler, steps, scale, images, seeds), from `cache` when a
    run with the same key scored it already."""
    import hashlib

    import torch

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"score-{digest}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    began = time.time()
    result = {**compute(), "wall_seconds": round(time.time() - began, 1)}  # kept: a reused score still says its cost
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(result, path)
    return result


def file_key(path: str) -> dict:
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime": stat.st_mtime}


def distillation_cost(student: str | None) -> dict | None:
    """What the student's checkpoint accounted for its distillation: steps, CPU-minutes, FLOPs, energy."""
    if not student:
        return None
    from diffusion.checkpoint import load_checkpoint

    payload = load_checkpoint(student, kind="diffusion")
    cost = payload.get("cost") or {}
    return {"steps": int(payload["step"]), "images_seen": cost.get("images_seen"),
            "train_seconds": round(float(payload.get("train_seconds", 0.0)), 1),
            "device_minutes": round(float(cost.get("device_seconds", 0.0)) / 60, 2), "train_flops": cost.get("train_flops"),
            "energy_j": cost.get("energy_j"), "energy_source": cost.get("energy_source"), "device": cost.get("device")}


def targets(results: list[dict]) -> list[str]:
    """The issue's targets, each said plainly as met or missed."""
    base = next(r for r in results if (r["row"], r["steps"]) == (BASELINE[0], BASELINE[2]))
    lines = []
    for steps, gap in TARGETS.items():
        student = next((r for r in results if r["row"] == "consistency" and r["steps"] == steps), None)
        if student is None:
            continue
        points = 100 * (base["adherence_mean"]["mean"] - student["adherence_mean"]["mean"])
        lines.append(f"{steps}-step student within {gap:.0f} points of DDIM-25's adherence: "
                     f"{'met' if points <= gap else 'MISSED'} ({points:+.1f} points below)")
        if steps == 1:
            for key, what in (("energy_j", "energy"), ("flops", "FLOPs")):
                ratio = base["cost_per_image"][key] / max(student["cost_per_image"][key], 1e-30)
                lines.append(f"per-image {what} >= {ENERGY_TARGET:.0f}x below DDIM-25 at 1 step: "
                             f"{'met' if ratio >= ENERGY_TARGET else 'MISSED'} ({ratio:.1f}x)")
    return lines


def scoring_time(results: list[dict]) -> str:
    seconds = [r.get("wall_seconds") for r in results]
    if None in seconds:
        return ""
    return f"; scoring every setting took {sum(seconds) / 60:.1f} min wall in all, reused scores included"


def report(args, results: list[dict], distill: dict | None, minutes: float, grid: str) -> None:
    header = ["row", "NFE", "adherence % (mean [95% t-interval], {} seeds)".format(len(args.seeds)),
              "FID-by-probe (mean [95% t])", "GFLOP / image", "J / image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        lines.append(f"| {r['row']} | {r['steps']} | {summary_text(r['adherence_mean'], 100)} | "
                     f"{summary_text(r['fid'])} | {r['cost_per_image']['flops'] / 1e9:.2f} | "
                     f"{r['cost_per_image']['energy_j']:.3f} |")
    command = "python experiments/few_step/run.py " + " ".join(sys.argv[1:])
    text = "\n".join([
        "# Few-step generation: the consistency student against the multistep solvers", "",
        *(["> **Smoke run**: the numbers mean nothing.", ""] if args.smoke else []),
        f"Command: `{command}` ({minutes:.1f} min wall for this invocation{scoring_time(results)}).", "",
        f"{args.num} test-split prompts per setting and seed, seeds {args.seeds}, FID-by-probe against {args.ref_num} "
        f"val renders (biased upward at small N: compare rows, not papers). Energy: {results[0]['cost_per_image']['energy_source']}.",
        "", "## Results", "", *lines, "",
        "## Targets (issue 33)", "", *[f"- {line}" for line in targets(results)], "",
        "## Distillation cost", "", f"```\n{json.dumps(distill, indent=1)}\n```" if distill else "(no student given)", "",
        f"![grid]({grid})", "", f"Grid: 8 images (the first 8 prompts, seed {args.seeds[0]}) per row, rows in this order: "
        + ", ".join(f"{r['row']} NFE {r['steps']}" for r in results if r["steps"] in (BASELINE[2], 1, 2)) + ".", "",
        *(["## Findings", "", (args.out / "findings.md").read_text()] if (args.out / "findings.md").is_file() else [])])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md" if not args.smoke else args.out / "README_smoke.md").write_text(text)


def main(argv=None) -> None:
    args = arguments(argv)
    if args.smoke:
        args.num, args.seeds, args.ref_num, args.fid_resamples = 8, args.seeds[:2], 64, 10
        args.cache = args.out / "cache"
    from diffusion.errors import UserError

    try:
        rows = settings(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    import torch

    from diffusion.evaluation.features import ProbeExtractor
    from diffusion.evaluation.probe import load_probe, train_probe
    from diffusion.loading import load_model
    from diffusion.tools.inspection import save_grid

    started, models, probes, results = time.time(), {}, {}, []
    for name, ckpt, sampler, steps, scale in rows:
        if ckpt not in models:
            models[ckpt] = load_model(ckpt, args.device)
        loaded = models[ckpt]
        resolution = int(loaded.payload["data"]["resolution"])
        if resolution not in probes:  # the cached probe; in smoke mode a quick one (seconds)
            probes[resolution] = (train_probe(resolution, steps=60, batch_size=32, held_out_images=100, progress=False)[0]
                                  if args.smoke else load_probe(resolution))
        probe = probes[resolution]
        key = {"ckpt": file_key(ckpt), "sampler": sampler, "steps": steps, "scale": scale, "num": args.num,
               "seeds": args.seeds, "ref_num": args.ref_num, "fid_resamples": args.fid_resamples}
        result = cached_score(key, args.cache, lambda: score(loaded, sampler, steps, scale, args, probe,
                                                             ProbeExtractor(probe)))
        results.append({"row": name, "ckpt": ckpt, "sampler": sampler or "own", "steps": steps, "guidance_scale": scale,
                        **result})
        print(f"{name:>12} NFE {steps:>2}: adherence {summary_text(result['adherence_mean'], 100)}, "
              f"FID {summary_text(result['fid'])}, {result['cost_per_image']['flops'] / 1e9:.2f} GFLOP", flush=True)
    grid_rows = [r for r in results if r["steps"] in (BASELINE[2], 1, 2)]
    grid = "grid.png" if not args.smoke else "grid_smoke.png"
    args.out.mkdir(parents=True, exist_ok=True)
    save_grid(torch.cat([r["images"] for r in grid_rows]), args.out / grid, columns=8, scale=3)
    plain = [{k: v for k, v in r.items() if k != "images"} for r in results]
    minutes = (time.time() - started) / 60
    distill = distillation_cost(args.student)
    (args.out / ("results.json" if not args.smoke else "results_smoke.json")).write_text(json.dumps(
        {"command": " ".join(sys.argv), "minutes": round(minutes, 2), "num": args.num, "seeds": args.seeds,
         "grid_rows": [f"{r['row']} NFE {r['steps']}" for r in grid_rows], "distillation": distill,
         "targets": targets(results), "results": plain}, indent=1, default=str) + "\n")
    report(args, results, distill, minutes, grid)
    print("\n".join(targets(results)))


if __name__ == "__main__":
    main()
