"""Samplers against network evaluations (NFE): DDIM, Euler, Heun and DPM-Solver++(2M) on DDPM-objective models,
and flow Euler on rectified-flow models trained with the same budget; adherence and FID-by-probe at 5, 10, 20 and
50 NFE (Heun: n steps cost 2n - 1, so 3, 5, 10 and 25 steps), over several training seeds.

    python experiments/samplers/nfe.py --ckpt <ddpm seed 0> <ddpm seed 1> <ddpm seed 2> \\
        --flow-ckpt <flow seed 0> <flow seed 1> <flow seed 2> --num 64
    python experiments/samplers/nfe.py --smoke --ckpt ... --flow-ckpt ...

Run k (the k-th --ckpt, and the k-th --flow-ckpt beside it) samples image i with seed 1000 k + i, so each run is
one draw of both the training seed and the sampling seeds; every cell is the mean over runs with its 95%
t-interval (3 runs or more), and the comparisons the README states are paired run by run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.common import (Context, adherence, fid_by_probe, generate, markdown_table, mean_adherence,  # noqa: E402
                                parser, read_attributes, save_rows, write_report)

NFES = (5, 10, 20, 50)
# (model, sampler, extra overrides of its config); steps follow from the NFE
SETTINGS = [("ddpm", "ddim", {}), ("ddpm", "euler", {"sigmas": "karras"}), ("ddpm", "heun", {"sigmas": "karras"}),
            ("ddpm", "dpmpp_2m", {"sigmas": "karras"}), ("ddpm", "dpmpp_2m", {"sigmas": "default"}),
            ("flow", "flow_euler", {})]
# the comparisons the README states, each paired run by run: (name, setting a, setting b), a setting being
# (model, sampler label, NFE); the difference is a - b
COMPARISONS = [("flow Euler against DDIM, 10 NFE", ("flow", "flow_euler", 10), ("ddpm", "ddim", 10)),
               ("DPM-Solver++(2M) trailing at 10 NFE against DDIM at 50", ("ddpm", "dpmpp_2m (default)", 10),
                ("ddpm", "ddim", 50)),
               ("DPM-Solver++(2M): trailing grid against Karras, 10 NFE", ("ddpm", "dpmpp_2m (default)", 10),
                ("ddpm", "dpmpp_2m (karras)", 10)),
               ("DDIM at 10 NFE against DDIM at 50", ("ddpm", "ddim", 10), ("ddpm", "ddim", 50)),
               ("Heun (Karras) at 19 NFE against DDIM at 20", ("ddpm", "heun (karras)", 19), ("ddpm", "ddim", 20))]
SEED_STRIDE = 1000  # run k samples image i with seed SEED_STRIDE * k + i


def steps_for(sampler: str, nfe: int) -> int:
    return (nfe + 1) // 2 if sampler in ("heun", "flow_heun") else nfe


def label(sampler: str, extra: dict) -> str:
    return sampler + (f" ({extra['sigmas']})" if "sigmas" in extra else "")


def main() -> None:
    p = parser("samplers", __doc__.splitlines()[0], num=64, trains=True)
    p.add_argument("--ckpt", nargs="+", required=True, help="objective=ddpm checkpoints, one per training seed")
    p.add_argument("--flow-ckpt", nargs="*", default=[], help="objective=flow checkpoints trained like --ckpt, "
                                                               "one per --ckpt")
    args = p.parse_args()
    if args.flow_ckpt and len(args.flow_ckpt) != len(args.ckpt):
        p.error(f"--flow-ckpt: give one per --ckpt ({len(args.ckpt)}), not {len(args.flow_ckpt)}")
    args.out = args.out or Path(__file__).resolve().parent / "nfe"
    ctx = Context("samplers", args)

    from omegaconf import OmegaConf

    from diffusion.evaluation.intervals import seed_summary, summary_text
    from diffusion.evaluation.score import sampler_config, toybirds_prompts
    from experiments.common import load_model

    n = ctx.num()
    prompts, prompted = toybirds_prompts(n)
    nfes = NFES[:2] if ctx.smoke else NFES
    per_run: dict[tuple, list[dict]] = {}  # (model, sampler label, nfe) -> one result per run
    grid_rows = []
    for k, ckpt in enumerate(args.ckpt):
        models = {"ddpm": load_model(ckpt, ctx.device)}
        if args.flow_ckpt:
            models["flow"] = load_model(args.flow_ckpt[k], ctx.device)
        resolution = int(models["ddpm"].payload["data"]["resolution"])
        seeds = [SEED_STRIDE * k + i for i in range(n)]
        for model_name, sampler, extra in SETTINGS:
            if model_name not in models:
                continue
            node = OmegaConf.merge(sampler_config(sampler), extra)
            for nfe in nfes:
                steps = steps_for(sampler, nfe)
                images, seconds = generate(ctx, models[model_name], prompts, seeds=seeds, sampler_cfg=node, steps=steps,
                                           guidance_scale=3.0)
                scores = adherence(read_attributes(ctx, images, resolution), prompted)
                quality = fid_by_probe(ctx, images, resolution)
                used = 2 * steps - 1 if sampler in ("heun", "flow_heun") else steps
                result = {"run": k, "ckpt": str(models[model_name].path),
                          "steps": steps, "nfe": used, "seconds": seconds, "adherence_mean": mean_adherence(scores),
                          "adherence": scores, **quality}
                per_run.setdefault((model_name, label(sampler, extra), used), []).append(result)
                if nfe == 10 and k == 0:
                    grid_rows.append(images[:8])
                print(f"run {k} {model_name} {label(sampler, extra)} NFE {used}: adherence "
                      f"{result['adherence_mean']:.1%}, FID {quality['fid']:.1f}, {seconds:.1f}s", flush=True)

    rows, settings = [], []
    for (model_name, name, nfe), results in per_run.items():
        adherence_summary = seed_summary([r["adherence_mean"] for r in results])
        fid_summary = seed_summary([r["fid"] for r in results])
        body = seed_summary([r["adherence"].get("body_colour", 0.0) for r in results])
        facing = seed_summary([r["adherence"].get("facing", 0.0) for r in results])
        settings.append({"model": model_name, "sampler": name, "nfe": nfe, "steps": results[0]["steps"],
                         "adherence_mean": adherence_summary, "fid": fid_summary, "body_colour": body,
                         "facing": facing, "runs": results})
        rows.append([model_name, name, results[0]["steps"], nfe, summary_text(adherence_summary, 100),
                     summary_text(body, 100), summary_text(facing, 100), summary_text(fid_summary, digits=0),
                     f"{sum(r['seconds'] for r in results) / len(results):.1f}"])
    table = markdown_table(["model", "sampler", "steps", "NFE", "adherence (mean) [95%]", "body colour", "facing",
                            "FID-by-probe", "wall time (s)"], rows)
    comparisons = paired_comparisons(per_run)
    if comparisons:
        table += "\n\nPaired run by run (a minus b; mean adherence, points):\n\n" + markdown_table(
            ["comparison", "a minus b [95%]", "per run"],
            [[c["name"], summary_text(c["difference"], 100),
              ", ".join(f"{100 * v:+.1f}" for v in c["difference"]["values"])] for c in comparisons])
    figures = [save_rows(ctx, grid_rows, "nfe_grid_10.png", columns=min(8, n))] if grid_rows else []
    write_report(
        ctx, "Samplers against NFE: DDIM, Euler, Heun, DPM-Solver++(2M), and a flow-matching model",
        "At a fixed number of network evaluations, which solver draws the most faithful birds, and how does a "
        "rectified-flow model trained with the same budget compare?",
        f"{len(args.ckpt)} run(s): run k samples --ckpt k (objective=ddpm, the default v-prediction cosine model) "
        f"and --flow-ckpt k (objective=flow, logit-normal t, otherwise the same config and steps), image i with seed "
        f"{SEED_STRIDE} k + i. {n} captions, guidance 3, pred_x0 clipped for the DDPM model's samplers. Heun's n "
        f"steps cost 2n - 1 NFE. Adherence: the probe's reading of the attributes each caption names; FID-by-probe "
        f"against {ctx.ref_num()} val-split renders (biased upward at small N: compare rows). Every cell: mean over "
        f"the runs [95% t-interval]. Grid: run 0's 8 images at 10 NFE, one row per sampler in table order.",
        table, figures, {"ckpt": args.ckpt, "flow_ckpt": args.flow_ckpt, "settings": settings,
                         "comparisons": comparisons})


def paired_comparisons(per_run: dict[tuple, list[dict]]) -> list[dict]:
    """COMPARISONS whose two settings were both run: the difference of mean adherence, run by run."""
    from diffusion.evaluation.intervals import seed_summary

    found = []
    for name, a, b in COMPARISONS:
        if a in per_run and b in per_run and len(per_run[a]) == len(per_run[b]):
            differences = [ra["adherence_mean"] - rb["adherence_mean"] for ra, rb in zip(per_run[a], per_run[b])]
            found.append({"name": name, "a": list(a), "b": list(b), "difference": seed_summary(differences)})
    return found


if __name__ == "__main__":
    main()
