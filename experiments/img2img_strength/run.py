"""Image-to-image strength sweep: real toy-birds renders re-prompted with a different body colour. How far do the
outputs move from the init image, and how often do they take the new colour while keeping everything else?

    python experiments/img2img_strength/run.py --ckpt <toy-birds last.ckpt>
    python experiments/img2img_strength/run.py            # trains the default model first (--steps 1800)
    python experiments/img2img_strength/run.py --smoke
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.common import (Context, adherence, markdown_table, mean_adherence, parser, read_attributes,  # noqa: E402
                                save_rows, write_report)

STRENGTHS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
SAMPLER_STEPS = 25
INIT_SEED = 31_337  # the init birds come from their own test-split seed
KEPT = ("species", "facing", "pose", "background", "size")  # what the new prompt keeps from the init bird


def recoloured_prompts(n: int, resolution: int):
    """n init renders, their attributes, and a caption of the same bird with another body colour."""
    from diffusion.data.toybirds import COLOURS, ToyBirds, make_caption

    birds = ToyBirds(split="test", resolution=resolution, seed=INIT_SEED, cache=False)
    rng = np.random.default_rng(INIT_SEED)
    inits, before, after, prompts = [], [], [], []
    for i in range(n):
        attributes = birds.attributes(i)
        others = [c for c in COLOURS if c != attributes["body_colour"]]
        changed = {**attributes, "body_colour": others[int(rng.integers(len(others)))]}
        inits.append(birds.image(i).float() / 127.5 - 1)
        before.append(attributes)
        after.append(changed)
        prompts.append(make_caption(changed, rng))
    return torch.stack(inits), before, after, prompts


def plot(ctx: Context, results: list[dict]) -> str:
    from diffusion.tools.inspection import pyplot, save_figure

    plt = pyplot()
    figure, left = plt.subplots(figsize=(6.5, 3.8))
    strengths = [r["strength"] for r in results]
    left.plot(strengths, [r["new_colour"] for r in results], "o-", label="takes the new colour")
    left.plot(strengths, [r["kept"] for r in results], "^-", label="keeps the other attributes")
    left.set(xlabel="strength", ylabel="fraction (probe)", ylim=(0, 1.05))
    right = left.twinx()
    right.plot(strengths, [r["rms_to_init"] for r in results], "s--", color="tab:red", label="RMS to init")
    right.set_ylabel("pixel RMS to the init image", color="tab:red")
    left.grid(alpha=0.3)
    figure.legend(loc="upper center", fontsize=8, ncol=3)
    figure.tight_layout()
    return save_figure(figure, ctx.out / "img2img_strength.png").name


def main() -> None:
    p = parser("img2img_strength", __doc__.splitlines()[0], num=128, trains=False)
    p.add_argument("--strengths", type=float, nargs="+", default=STRENGTHS)
    args = p.parse_args()
    ctx = Context("img2img_strength", args)

    from diffusion.data.toybirds import parse_prompt
    from diffusion.evaluation.memorisation import cosine_distances

    loaded = ctx.model()
    resolution = int(loaded.payload["data"]["resolution"])
    n, steps = ctx.num(), ctx.sampling_steps(SAMPLER_STEPS)
    strengths = [0.3, 0.6, 1.0] if ctx.smoke and args.strengths == STRENGTHS else args.strengths
    inits, before, after, prompts = recoloured_prompts(n, resolution)
    extractor = ctx.extractor(resolution)
    init_features = extractor(inits)
    sampler = loaded.sampler()
    shape = tuple(loaded.payload["data"]["shape"])

    from diffusion.pipeline import generate_images

    rows, grid_rows, results = [], [inits[:8]], []
    for strength in strengths:
        outputs = []
        for first in range(0, n, args.batch_size):
            chunk = slice(first, min(first + args.batch_size, n))
            outputs.append(generate_images(
                loaded.model, sampler, prompts[chunk], list(range(first, chunk.stop)), shape=shape, steps=steps,
                guidance_scale=3.0, init=loaded.space.encode(inits[chunk].to(ctx.device)), strength=strength,
                decode=loaded.space.decode, device=ctx.device).cpu())
        images = torch.cat(outputs)
        readings = read_attributes(ctx, images, resolution)
        rms = float(((images - inits) ** 2).mean((1, 2, 3)).sqrt().mean())
        feature_distance = float(cosine_distances(extractor(images), init_features).diagonal().mean())
        new_colour = float(np.mean([r["body_colour"] == a["body_colour"] for r, a in zip(readings, after)]))
        old_colour = float(np.mean([r["body_colour"] == b["body_colour"] for r, b in zip(readings, before)]))
        kept = float(np.mean([r[k] == b[k] for r, b in zip(readings, before) for k in KEPT]))
        scores = adherence(readings, [parse_prompt(prompt) for prompt in prompts])  # what each new caption mentions
        run_steps = len(sampler.img2img_levels(steps, strength))
        results.append({"strength": strength, "steps_run": run_steps, "rms_to_init": rms, "feature_distance": feature_distance,
                        "new_colour": new_colour, "old_colour": old_colour, "kept": kept,
                        "adherence_mean": mean_adherence(scores)})
        rows.append([f"{strength:g}", run_steps, f"{rms:.3f}", f"{feature_distance:.3f}", f"{new_colour:.1%}",
                     f"{old_colour:.1%}", f"{kept:.1%}", f"{mean_adherence(scores):.1%}"])
        grid_rows.append(images[:8])
        print(rows[-1])

    table = markdown_table(["strength", "steps run", "pixel RMS to init", "probe-feature distance to init",
                            "new body colour (probe)", "old body colour (probe)", "other attributes kept",
                            "adherence to the new prompt (mean)"], rows)
    figures = [plot(ctx, results), save_rows(ctx, grid_rows, "img2img_grid.png", columns=min(8, n))]
    write_report(
        ctx, "Image-to-image: strength",
        "Starting from a real render and a prompt that changes only its body colour, how does the strength trade "
        "faithfulness to the init image against following the new prompt?",
        f"One model ({'--ckpt ' + str(args.ckpt) if args.ckpt else f'the default config trained for {ctx.steps} steps'}). "
        f"{n} test-split renders (seed {INIT_SEED}); each new prompt is a caption of the same bird with another body "
        f"colour. SDEdit-style image-to-image (Meng et al. 2022): noise the init to the strength's point of the DDIM "
        f"{steps}-step grid and denoise from there (strength 1 = from noise), guidance 3. Distances: per-pixel RMS on "
        f"[-1, 1] and cosine distance of probe features, each output against its own init. Probe readings: the new "
        f"colour taken, the old colour kept, and {', '.join(KEPT)} unchanged. Grid: first row the init images, then one "
        "row per strength.",
        table, figures, {"strengths": results})


if __name__ == "__main__":
    main()
