"""Prompt adherence on toy-birds: sample prompts with random attributes, read the images back with the
probe, and compare with chance and with the probe's reading of real renders of the same prompts.

    python -m diffusion.evaluation.adherence --ckpt outputs/<date>/<time>/checkpoints/last.ckpt --num 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffusion.data.toybirds import ATTRIBUTES, ToyBirds
from diffusion.errors import UserError
from diffusion.evaluation.probe import load_probe, score
from diffusion.pipeline import generate_images, image_grid, save_png

PROMPT_SEED = 20_250  # the evaluation prompts come from their own split seed, not a training one


def evaluation_prompts(num: int, resolution: int, seed: int = PROMPT_SEED) -> tuple[list[str], list[dict], torch.Tensor]:
    """`num` full captions of random toy-birds (every attribute mentioned), their attributes, and the real renders."""
    birds = ToyBirds(split="test", resolution=resolution, num_images=num, seed=seed, cache=False)
    prompts = [birds.caption(i) for i in range(num)]
    attributes = [birds.attributes(i) for i in range(num)]
    real = torch.stack([birds[i]["image"] for i in range(num)])
    return prompts, attributes, real


@torch.no_grad()
def adherence(loaded, num: int = 64, steps: int | None = None, guidance_scale: float = 3.0, batch_size: int = 32,
              sampler_cfg=None, eta: float | None = None, seed: int = 0, device="cpu", progress: bool = True) -> dict:
    """Per-attribute probe accuracy of generated images, next to chance and real renders."""
    resolution = int(loaded.payload["data"]["resolution"])
    prompts, attributes, real = evaluation_prompts(num, resolution)
    scheduler = loaded.scheduler(sampler_cfg)
    sampler_cfg = sampler_cfg or loaded.config.sampler
    steps = int(steps or sampler_cfg.steps)
    eta = float(eta if eta is not None else (sampler_cfg.get("eta") or 0.0))
    shape = tuple(loaded.payload["data"]["shape"])
    images, start = [], time.time()
    for first in tqdm(range(0, num, batch_size), desc="generating", unit="batch", disable=not progress):
        batch = prompts[first: first + batch_size]
        images.append(generate_images(loaded.model, scheduler, batch, [seed + first + i for i in range(len(batch))],
                                      shape=shape, steps=steps, eta=eta, guidance_scale=guidance_scale,
                                      decode=loaded.space.decode, device=device).cpu())
    seconds = time.time() - start
    images = torch.cat(images)
    probe = load_probe(resolution)
    return {
        "generated": score(probe, images, attributes),
        "real_renders": score(probe, real, attributes),
        "chance": {name: 1 / len(values) for name, values in ATTRIBUTES.items()},
        "num_images": num, "steps": steps, "guidance_scale": guidance_scale, "eta": eta,
        "sampler": type(scheduler).__name__, "seconds": round(seconds, 2), "images": images, "prompts": prompts,
    }


def table(result: dict) -> str:
    lines = ["| attribute | generated | real renders | chance |", "|---|---|---|---|"]
    for name in result["generated"]:
        lines.append(f"| {name} | {result['generated'][name]:.1%} | {result['real_renders'][name]:.1%} | {result['chance'][name]:.1%} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion.evaluation.adherence", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a diffusion checkpoint trained on toy-birds")
    parser.add_argument("--num", type=int, default=64, help="prompts (one image each)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's sampler)")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sampler", choices=["ddim", "ddpm"], default=None)
    parser.add_argument("--out", type=Path, default=None, help="write result JSON and an image grid here")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        from diffusion.loading import load_diffusion_checkpoint
        from diffusion.training.runtime import resolve_device

        if args.num < 1:
            raise UserError(f"--num must be >= 1, got {args.num}")
        device = resolve_device(args.device)
        loaded = load_diffusion_checkpoint(args.ckpt, device)
        sampler_cfg = None
        if args.sampler:
            from omegaconf import OmegaConf

            sampler_cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "sampler" / f"{args.sampler}.yaml")
        result = adherence(loaded, args.num, args.steps, args.guidance, args.batch_size, sampler_cfg, device=device)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(table(result))
    print(f"{result['num_images']} images, {result['sampler']} {result['steps']} steps, guidance {result['guidance_scale']}, "
          f"{result['seconds']} s")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        save_png(image_grid(result["images"]), args.out / "adherence_grid.png", {"prompts": result["prompts"]})
        (args.out / "adherence.json").write_text(json.dumps({k: v for k, v in result.items() if k != "images"}, indent=1))


if __name__ == "__main__":
    main()
