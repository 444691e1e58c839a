"""Samplers against network evaluations (NFE): DDIM, Euler, Heun and DPM-Solver++(2M) on one DDPM-objective
model, and flow Euler on a rectified-flow model trained with the same budget; adherence and FID-by-probe at
5, 10, 20 and 50 NFE (Heun: n steps cost 2n - 1, so 3, 5, 10 and 25 steps).

    python experiments/samplers/nfe.py --ckpt <ddpm last.ckpt> --flow-ckpt <flow last.ckpt> --num 64
    python experiments/samplers/nfe.py --smoke --ckpt ... --flow-ckpt ...
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
            ("ddpm", "dpmpp_2m", {"sigmas": "karras"}), ("flow", "flow_euler", {})]


def steps_for(sampler: str, nfe: int) -> int:
    return (nfe + 1) // 2 if sampler in ("heun", "flow_heun") else nfe


def main() -> None:
    p = parser("samplers", __doc__.splitlines()[0], num=64, trains=False)
    p.add_argument("--flow-ckpt", default=None, help="an objective=flow checkpoint trained like --ckpt")
    args = p.parse_args()
    args.out = args.out or Path(__file__).resolve().parent / "nfe"
    ctx = Context("samplers", args)

    from omegaconf import OmegaConf

    from diffusion.evaluation.score import sampler_config, toybirds_prompts
    from experiments.common import load_model

    models = {"ddpm": ctx.model()}
    if args.flow_ckpt:
        models["flow"] = load_model(args.flow_ckpt, ctx.device)
    resolution = int(models["ddpm"].payload["data"]["resolution"])
    n = ctx.num()
    prompts, prompted = toybirds_prompts(n)
    nfes = NFES[:2] if ctx.smoke else NFES
    rows, results, grid_rows = [], [], []
    for model_name, sampler, extra in SETTINGS:
        if model_name not in models:
            continue
        loaded = models[model_name]
        node = sampler_config(sampler)
        node = OmegaConf.merge(node, extra)
        for nfe in nfes:
            steps = steps_for(sampler, nfe)
            images, seconds = generate(ctx, loaded, prompts, sampler_cfg=node, steps=steps, guidance_scale=3.0)
            scores = adherence(read_attributes(ctx, images, resolution), prompted)
            quality = fid_by_probe(ctx, images, resolution)
            used = 2 * steps - 1 if sampler in ("heun", "flow_heun") else steps
            result = {"model": model_name, "sampler": sampler, "steps": steps, "nfe": used, "seconds": seconds,
                      "adherence_mean": mean_adherence(scores), "adherence": scores, **quality}
            results.append(result)
            rows.append([model_name, sampler + (" (karras)" if extra.get("sigmas") == "karras" else ""), steps, used,
                         f"{result['adherence_mean']:.1%}", f"{scores.get('body_colour', 0):.1%}",
                         f"{scores.get('facing', 0):.1%}", f"{quality['fid']:.2f}", f"{seconds:.1f}"])
            if nfe == 10:
                grid_rows.append(images[:8])
            print(rows[-1], flush=True)
    table = markdown_table(["model", "sampler", "steps", "NFE", "adherence (mean)", "body colour", "facing",
                            "FID-by-probe", "wall time (s)"], rows)
    figures = [save_rows(ctx, grid_rows, "nfe_grid_10.png", columns=min(8, n))]
    write_report(
        ctx, "Samplers against NFE: DDIM, Euler, Heun, DPM-Solver++(2M), and a flow-matching model",
        "At a fixed number of network evaluations, which solver draws the most faithful birds, and how does a "
        "rectified-flow model trained with the same budget compare?",
        f"Models: --ckpt {args.ckpt} (objective=ddpm, the default v-prediction cosine model) and --flow-ckpt "
        f"{args.flow_ckpt} (objective=flow, logit-normal t, otherwise the same config and time budget). "
        f"{n} captions, seed i for image i, guidance 3, pred_x0 clipped for the DDPM model's samplers. Heun's n steps "
        f"cost 2n - 1 NFE. Adherence: the probe's reading of the attributes each caption names; FID-by-probe against "
        f"{ctx.ref_num()} val-split renders (biased upward at small N: compare rows). Grid: 8 images at 10 NFE, one "
        f"row per sampler in table order.", table, figures, {"settings": results})


if __name__ == "__main__":
    main()
