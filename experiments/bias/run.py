"""Bias: train with 70% red birds, prompt "a bird" (no colour), and read the body colour of the samples with
the probe. Does the model match the 70%, shrink it or amplify it, and what does guidance do to it?

    python experiments/bias/run.py                       # trains experiment=bias (--steps 1800), then samples
    python experiments/bias/run.py --ckpt <a model trained with experiment=bias>
    python experiments/bias/run.py --smoke               # a minute: tiny model, a few images
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.common import (Context, colour_shares, generate, markdown_table, parser, read_attributes,  # noqa: E402
                                save_rows, write_report)

GUIDANCE = [0.0, 1.0, 3.0, 5.0]  # 0 = the unconditional model (the prompt is ignored)
SAMPLER_STEPS = 25


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (Wilson 1927)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def training_share(loaded, colour: str = "red", sample: int = 20_000) -> float:
    """The share of `colour` among the training birds' body colours (their attributes, no rendering)."""
    from diffusion.data.toybirds import ToyBirds

    dataset = loaded.config.dataset
    birds = ToyBirds(split="train", resolution=16, num_images=dataset.get("num_images"), seed=dataset.get("seed", 0),
                     attribute_weights=dataset.get("attribute_weights"), cache=False)
    count = min(sample, len(birds))
    return sum(birds.attributes(i)["body_colour"] == colour for i in range(count)) / count


def verdict(low: float, high: float, target: float, share: float) -> str:
    if low <= target <= high:
        return "match"
    return "amplify" if share > target else "shrink"


def main() -> None:
    args = parser("bias", __doc__.splitlines()[0], num=256, trains=False).parse_args()
    ctx = Context("bias", args)
    loaded = ctx.model("experiment=bias")
    resolution = int(loaded.payload["data"]["resolution"])
    target = training_share(loaded)
    n, steps = ctx.num(), ctx.sampling_steps(SAMPLER_STEPS)

    rows, figure_rows, results = [], [], {"training_red_share": target, "settings": []}
    settings = [("a bird", g, "red") for g in GUIDANCE] + [("a blue bird", 3.0, "blue")]  # the last: a control
    for prompt, guidance, colour in settings:
        images, seconds = generate(ctx, loaded, [prompt] * n, guidance_scale=guidance, steps=steps)
        shares = colour_shares(read_attributes(ctx, images, resolution))
        hits = round(shares[colour] * n)
        low, high = wilson_interval(hits, n)
        expected = target if colour == "red" else None
        call = verdict(low, high, target, shares[colour]) if expected is not None else "control (asked for blue)"
        others = ", ".join(f"{c} {s:.0%}" for c, s in sorted(shares.items(), key=lambda kv: -kv[1])[:3])
        rows.append([f'"{prompt}"', f"{guidance:g}", f"{colour} {shares[colour]:.1%}", f"[{low:.1%}, {high:.1%}]",
                     f"{target:.1%}" if expected is not None else "-", call, others])
        results["settings"].append({"prompt": prompt, "guidance": guidance, "colour": colour, "share": shares[colour],
                                    "interval": [low, high], "verdict": call, "shares": shares, "seconds": seconds})
        figure_rows.append(images[:16])
        print(rows[-1])

    table = markdown_table(["prompt", "guidance", "share read by the probe", "95% interval (Wilson)",
                            "training share", "verdict", "top colours"], rows)
    figure = save_rows(ctx, figure_rows, "bias_samples.png", columns=min(16, n))
    write_report(
        ctx, "Bias: 70% red training birds, prompted with \"a bird\"",
        "A model trained on a skewed attribute distribution (70% red bodies, each other colour 30%/7) is asked for "
        "\"a bird\", with no colour. Is red's share of its samples the training share (match), smaller (shrink) or "
        "larger (amplify), and how does classifier-free guidance change it?",
        f"`python train.py experiment=bias` ({ctx.steps} steps unless --ckpt); {n} samples per row, DDIM {steps} steps, "
        f"seeds 0..{n - 1}; body colour read by the toy-birds probe (>= 98% accurate on renders). The verdict compares "
        "the training share with the 95% Wilson interval of the sampled share. Guidance 0 is the unconditional model. "
        "The last row is a control: the model can draw non-red birds when asked.",
        table, [figure], results)


if __name__ == "__main__":
    main()
