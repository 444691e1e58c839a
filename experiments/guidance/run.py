"""Classifier-free guidance scale sweep: prompt adherence (probe) and FID/KID-by-probe from scale 0 (unconditional)
to 10, on one model with the same prompts and seeds.

    python experiments/guidance/run.py --ckpt <toy-birds last.ckpt>
    python experiments/guidance/run.py                     # trains the default model first (--steps 1800)
    python experiments/guidance/run.py --smoke
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from diffusion.data.toybirds import ATTRIBUTES  # noqa: E402
from experiments.common import (Context, adherence, fid_by_probe, generate, markdown_table, mean_adherence,  # noqa: E402
                                parser, read_attributes, save_rows, write_report)

SCALES = [0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0]
SAMPLER_STEPS = 25


def plot(ctx: Context, results: list[dict]) -> str:
    from diffusion.tools.inspection import pyplot, save_figure

    plt = pyplot()
    figure, left = plt.subplots(figsize=(6.5, 3.8))
    scales = [r["guidance"] for r in results]
    left.plot(scales, [r["adherence_mean"] for r in results], "o-", color="tab:blue", label="mean adherence")
    left.set(xlabel="guidance scale", ylabel="mean adherence (probe)")
    right = left.twinx()
    right.plot(scales, [r["fid"] for r in results], "s--", color="tab:red", label="FID-by-probe")
    right.set_ylabel("FID-by-probe", color="tab:red")
    left.grid(alpha=0.3)
    figure.legend(loc="upper center", fontsize=8)
    figure.tight_layout()
    return save_figure(figure, ctx.out / "guidance_sweep.png").name


def main() -> None:
    p = parser("guidance", __doc__.splitlines()[0], num=256, trains=False)
    p.add_argument("--scales", type=float, nargs="+", default=SCALES)
    args = p.parse_args()
    ctx = Context("guidance", args)

    from diffusion.evaluation.score import toybirds_prompts

    loaded = ctx.model()
    resolution = int(loaded.payload["data"]["resolution"])
    n, steps = ctx.num(), ctx.sampling_steps(SAMPLER_STEPS)
    scales = [0.0, 1.0, 3.0] if ctx.smoke and args.scales == SCALES else args.scales
    prompts, prompted = toybirds_prompts(n)
    rows, grid_rows, results = [], [], []
    for scale in scales:
        images, seconds = generate(ctx, loaded, prompts, guidance_scale=scale, steps=steps)
        scores = adherence(read_attributes(ctx, images, resolution), prompted)
        quality = fid_by_probe(ctx, images, resolution)
        results.append({"guidance": scale, "seconds": seconds, "adherence_mean": mean_adherence(scores),
                        "adherence": scores, **quality})
        rows.append([f"{scale:g}", f"{mean_adherence(scores):.1%}", *(f"{scores.get(a, 0):.1%}" for a in ATTRIBUTES),
                     f"{quality['fid']:.2f}", f"{quality['kid']:.4f} ± {quality['kid_std']:.4f}", f"{seconds:.1f}"])
        grid_rows.append(images[:8])
        print(rows[-1])

    table = markdown_table(["guidance", "adherence (mean)", *(a.replace("_", " ") for a in ATTRIBUTES),
                            "FID-by-probe", "KID-by-probe", "seconds"], rows)
    figures = [plot(ctx, results), save_rows(ctx, grid_rows, "guidance_grid.png", columns=min(8, n))]
    write_report(
        ctx, "Classifier-free guidance scale",
        "How do prompt adherence and sample quality (FID-by-probe) change with the guidance scale?",
        f"One model ({'--ckpt ' + str(args.ckpt) if args.ckpt else f'the default config trained for {ctx.steps} steps'}), "
        f"{n} full captions of test-split birds, the same seeds at every scale, DDIM {steps} steps. Scale 0 is the "
        "unconditional model, 1 the conditional one without guidance (one forward pass). Adherence: probe readings of "
        f"the attributes each caption mentions. FID/KID-by-probe against {ctx.ref_num()} val-split renders. Grid: the "
        "first 8 images, one row per scale.",
        table, figures, {"scales": results})


if __name__ == "__main__":
    main()
