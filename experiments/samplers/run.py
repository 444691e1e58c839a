"""Samplers against wall time: DDPM with 1000 steps vs DDIM with 10, 20, 50 and 100 steps, on one model, the same
prompts and seeds; prompt adherence (probe) and FID/KID-by-probe for each.

    python experiments/samplers/run.py --ckpt <toy-birds last.ckpt>      # samples only
    python experiments/samplers/run.py                                   # trains the default model first (--steps 1800)
    python experiments/samplers/run.py --smoke
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.common import (Context, adherence, fid_by_probe, generate, markdown_table, mean_adherence,  # noqa: E402
                                parser, read_attributes, save_rows, write_report)

SETTINGS = [("ddpm", 1000), ("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddim", 100)]
SMOKE_SETTINGS = [("ddpm", 10), ("ddim", 3), ("ddim", 5)]


def plot(ctx: Context, results: list[dict]) -> str:
    from diffusion.tools.inspection import pyplot, save_figure

    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in results:
        label = f"{r['sampler']} {r['steps']}"
        marker = "s" if r["sampler"] == "ddpm" else "o"
        left.scatter(r["seconds_per_image"], r["adherence_mean"], marker=marker)
        left.annotate(label, (r["seconds_per_image"], r["adherence_mean"]), fontsize=8)
        right.scatter(r["seconds_per_image"], r["fid"], marker=marker)
        right.annotate(label, (r["seconds_per_image"], r["fid"]), fontsize=8)
    left.set(xscale="log", xlabel="seconds per image", ylabel="mean adherence (probe)", title="prompt adherence")
    right.set(xscale="log", xlabel="seconds per image", ylabel="FID-by-probe (lower is better)", title="FID-by-probe")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, ctx.out / "samplers_vs_time.png").name


def main() -> None:
    args = parser("samplers", __doc__.splitlines()[0], num=128, trains=False).parse_args()
    ctx = Context("samplers", args)

    from diffusion.evaluation.score import sampler_config, toybirds_prompts

    loaded = ctx.model()
    resolution = int(loaded.payload["data"]["resolution"])
    n = ctx.num()
    prompts, prompted = toybirds_prompts(n)
    rows, grid_rows, results = [], [], []
    for name, steps in (SMOKE_SETTINGS if ctx.smoke else SETTINGS):
        images, seconds = generate(ctx, loaded, prompts, sampler_cfg=sampler_config(name), steps=steps, guidance_scale=3.0)
        scores = adherence(read_attributes(ctx, images, resolution), prompted)
        quality = fid_by_probe(ctx, images, resolution)
        result = {"sampler": name, "steps": steps, "seconds": seconds, "seconds_per_image": seconds / n,
                  "adherence_mean": mean_adherence(scores), "adherence": scores, **quality}
        results.append(result)
        rows.append([name.upper(), steps, f"{seconds:.1f}", f"{seconds / n:.3f}", f"{result['adherence_mean']:.1%}",
                     f"{scores.get('body_colour', 0):.1%}", f"{quality['fid']:.2f}", f"{quality['kid']:.4f} ± {quality['kid_std']:.4f}"])
        grid_rows.append(images[:8])
        print(rows[-1])

    table = markdown_table(["sampler", "steps", "wall time (s)", "s / image", "adherence (mean)", "adherence (body colour)",
                            "FID-by-probe", "KID-by-probe"], rows)
    figures = [plot(ctx, results), save_rows(ctx, grid_rows, "samplers_grid.png", columns=min(8, n))]
    write_report(
        ctx, "Samplers: DDPM 1000 steps vs DDIM 10-100 steps",
        "How much quality and prompt adherence does each sampler buy per second of sampling?",
        f"One model ({'--ckpt ' + str(args.ckpt) if args.ckpt else f'the default config trained for {ctx.steps} steps'}). "
        f"{n} full captions of test-split birds, the same seeds (image i: seed i) for every sampler, guidance 3, "
        f"trailing timestep spacing, pred_x0 clipped (conf/sampler). Adherence: the probe's reading of the attributes "
        f"each caption mentions. FID/KID-by-probe: the probe's 128-d features against {ctx.ref_num()} val-split renders "
        f"(FID is biased upward at small N: compare rows, not with other N). Wall time on {ctx.device.type}, batch "
        f"{args.batch_size}, including the text encoder. Grid: the first 8 images, one row per sampler in table order.",
        table, figures, {"settings": results})


if __name__ == "__main__":
    main()
