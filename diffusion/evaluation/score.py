"""Scoring a checkpoint: generate N images for held-out prompts, then FID / KID against cached reference
statistics and, on toy-birds, per-attribute prompt adherence read back by the probe.

`python -m diffusion.evaluation` (diffusion/evaluation/__main__.py) is the command line; experiment
scripts call `generate`, `toybirds_reference` and `quality` directly.

Toy-birds: the prompts are the full captions of test-split birds (PROMPT_SEED) and the
reference is the first `ref_num` birds of the val split, drawn from the same uniform attribute
distribution; both sets are fresh renders, never training images. Adherence counts only the
attributes a caption mentions (`parse_prompt`: a caption that says "bird" names no species). The
probe's reading of the real renders of the same captions, and the FID of those real renders against
the reference (the floor that N images can reach), are reported beside the model's figures.

With torchrun every process generates its share (image i has seed `seed + i`, so the images do not
depend on the number of processes); features and probe readings are gathered on rank 0.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from diffusion.config import CONF_DIR
from diffusion.data.toybirds import ATTRIBUTES, RENDERER_VERSION, ToyBirds, parse_prompt
from diffusion.evaluation.fid import (distance_to, fid_from_features, frechet_distance, gaussian_statistics,
                                      reference_statistics)
from diffusion.evaluation.intervals import adherence_hits, adherence_intervals, bootstrap_interval
from diffusion.evaluation.kid import kernel_inception_distance
from diffusion.cost import EnergyMeter, FlopTally
from diffusion.pipeline import generate_images

SAMPLER_DIR = CONF_DIR / "sampler"
REFERENCE_SPLIT, REFERENCE_SEED = "val", 0
PROMPT_SEED = 20_250  # the evaluation prompts come from their own test-split seed, never a training one


def sampler_config(name: str | None):
    """conf/sampler/<name>.yaml, or None (the checkpoint's own sampler)."""
    if not name:
        return None
    from omegaconf import OmegaConf

    from diffusion.errors import UserError

    path = SAMPLER_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown sampler {name!r}; choose one of: {', '.join(p.stem for p in sorted(SAMPLER_DIR.glob('*.yaml')))}")
    return OmegaConf.load(path)


def is_toybirds(loaded) -> bool:
    return str(loaded.config.dataset.get("_target_", "")).endswith("ToyBirds")


def toybirds_prompts(num: int, start: int = 0) -> tuple[list[str], list[dict]]:
    """Captions of test-split birds start .. start+num-1 and the attributes each caption mentions."""
    birds = ToyBirds(split="test", resolution=16, seed=PROMPT_SEED, cache=False)
    prompts = [birds.caption(i) for i in range(start, start + num)]
    return prompts, [parse_prompt(p) for p in prompts]


def toybirds_renders(indices, resolution: int) -> torch.Tensor:
    """The real renders [N, 3, R, R] of the evaluation prompts' birds (same test split and seed)."""
    birds = ToyBirds(split="test", resolution=resolution, seed=PROMPT_SEED, cache=False)
    return torch.stack([birds.image(i) for i in indices]).float() / 127.5 - 1


def toybirds_reference(extractor, resolution: int, count: int, cache_dir=None, batch_size: int = 500) -> dict:
    """Reference statistics of `count` val-split toy-birds (uniform attributes), cached."""
    def batches():
        birds = ToyBirds(split=REFERENCE_SPLIT, resolution=resolution, seed=REFERENCE_SEED, cache=False)
        for first in range(0, count, batch_size):
            indices = range(first, min(first + batch_size, count))
            yield torch.stack([birds.image(i) for i in indices]).float() / 127.5 - 1

    name = f"toybirds-{REFERENCE_SPLIT}-seed{REFERENCE_SEED}-renderer{RENDERER_VERSION}"
    return reference_statistics(extractor, name, resolution, count, batches, cache_dir)


@torch.no_grad()
def generate(loaded, prompts: list[str], seeds: list[int], *, steps: int | None = None, guidance_scale: float = 3.0,
             sampler_cfg=None, eta: float | None = None, batch_size: int = 64, device="cpu", progress: bool = True,
             negative_prompt: str = "", on_batch=None, cost: dict | None = None, guidance: dict | None = None,
             guide=None):
    """Generate one image per (prompt, seed) in batches: yields (indices, images [B, 3, H, W] in [-1, 1] on the CPU).
    `guidance` is the method and its options ({"name": "apg", "eta": 0.2}; None: classifier-free guidance);
    `guide` autoguidance's guide (a LoadedModel, diffusion.loading.load_guide) with {"name": "auto"}.
    `on_batch(indices, images)` is called too, when given; into `cost`, when given, go the generation's FLOPs,
    images, seconds and joules (summed over batches) and the energy figure's source."""
    sampler = loaded.sampler(sampler_cfg, eta=eta)
    sampler_cfg = sampler_cfg or loaded.config.sampler
    steps = int(steps or sampler_cfg.steps)
    shape = loaded.shape
    starts = range(0, len(prompts), batch_size)
    meter = EnergyMeter(device)
    for first in tqdm(starts, desc="generating", unit="batch", disable=not progress, dynamic_ncols=True):
        indices = list(range(first, min(first + batch_size, len(prompts))))
        tally = FlopTally(enabled=cost is not None)
        meter.start()
        images = generate_images(loaded.model, sampler, [prompts[i] for i in indices], [seeds[i] for i in indices],
                                 shape=shape, steps=steps, guidance_scale=guidance_scale, guidance=guidance,
                                 negative_prompt=negative_prompt, decode=loaded.space.decode, device=device,
                                 tally=tally, guide=None if guide is None else guide.model).cpu()
        if cost is not None:  # .cpu() above waited for the device
            for key, value in (("flops", tally.total), ("images", len(indices)), ("seconds", meter.seconds()),
                               ("energy_j", meter.joules())):
                cost[key] = cost.get(key, 0) + value
            cost["energy_source"] = meter.source
        if on_batch is not None:
            on_batch(indices, images)
        yield indices, images


def adherence_from_predictions(predictions: list[dict], prompted: list[dict]) -> dict[str, float]:
    """Per attribute, the fraction of images whose probe reading matches the prompt (mentioned attributes only)."""
    hits, counts = {}, {}
    for got, wanted in zip(predictions, prompted):
        for name, value in wanted.items():
            counts[name] = counts.get(name, 0) + 1
            hits[name] = hits.get(name, 0) + int(got[name] == value)
    return {name: hits[name] / counts[name] for name in ATTRIBUTES if name in counts}


def quality(features: torch.Tensor, reference: dict, kid_subsets: int = 100, kid_subset_size: int = 1000) -> dict:
    """FID and KID of generated features against reference statistics."""
    mu, sigma = gaussian_statistics(features)
    kid_mean, kid_std = kernel_inception_distance(features, reference["features"], kid_subsets, kid_subset_size)
    return {"fid": frechet_distance(mu, sigma, reference["mu"].numpy(), reference["sigma"].numpy()),
            "kid": kid_mean, "kid_std": kid_std}


def gather(objects: list, processes) -> list:
    """Concatenate every process's list on rank 0 (others get [])."""
    if not processes.distributed:
        return objects
    import torch.distributed as dist

    everything = [None] * processes.world_size if processes.is_main else None
    dist.gather_object(objects, everything, dst=0)
    return [x for part in everything for x in part] if processes.is_main else []


def evaluate(loaded, extractor, *, num: int = 1000, ref_num: int | None = None, steps: int | None = None,
             guidance_scale: float = 3.0, sampler_cfg=None, eta: float | None = None, batch_size: int = 64,
             seed: int = 0, kid_subsets: int = 100, kid_subset_size: int = 1000, cache_dir=None, device="cpu",
             processes=None, probe=None, keep_images: int = 64, progress: bool = True, guidance: dict | None = None,
             adherence_resamples: int = 1000, fid_resamples: int = 200, guide=None,
             keep_per_image: bool = False) -> dict | None:
    """Generate `num` images and score them (toy-birds checkpoints only). Returns the results on rank 0
    (None on other ranks). `keep_images` of them come back under "images" for a grid; with `keep_per_image`,
    "per_image" holds each image's probe features [N, D] and attribute hits [N, A] (NaN: not mentioned), in prompt
    order, for paired comparisons between settings (`intervals.paired_bootstrap_interval`).
    Beside each headline a 95% bootstrap interval over the images (diffusion/evaluation/intervals.py):
    "adherence_interval" {attribute: [low, high]}, "adherence_mean" with "adherence_mean_interval", "fid_interval"
    (the generated features resampled against the fixed reference statistics; fewer resamples, each one costs
    two eigen-decompositions of a [D, D] matrix)."""
    from diffusion.errors import UserError
    from diffusion.training.runtime import Processes

    processes = processes or Processes()
    if not is_toybirds(loaded):
        raise UserError("python -m diffusion.evaluation scores toy-birds checkpoints (it knows their prompts and "
                        "reference set); for other data compute features with diffusion.evaluation.features and "
                        "use diffusion.evaluation.fid / kid directly")
    resolution = int(loaded.payload["data"]["resolution"])
    ref_num = int(ref_num or num)
    prompts, prompted = toybirds_prompts(num)
    seeds = [seed + i for i in range(num)]
    if probe is None:
        from diffusion.evaluation.probe import load_probe

        probe = load_probe(resolution)
    from diffusion.evaluation.probe import predict

    mine = list(range(processes.rank, num, processes.world_size))
    rows, started, cost = [], time.time(), {}
    for indices, images in generate(loaded, [prompts[i] for i in mine], [seeds[i] for i in mine], steps=steps,
                                    guidance_scale=guidance_scale, sampler_cfg=sampler_cfg, eta=eta,
                                    batch_size=batch_size, device=device, progress=progress and processes.is_main,
                                    cost=cost, guidance=guidance, guide=guide):
        features, readings = extractor(images), predict(probe, images)
        for k, i in enumerate(indices):
            rows.append((mine[i], features[k], readings[k], images[k] if mine[i] < keep_images else None))
    seconds = time.time() - started
    generated = max(cost.get("images", 0), 1)  # this process's images: its own FLOPs, seconds and energy per image
    cost_per_image = {**{key: cost.get(key, 0) / generated for key in ("flops", "seconds", "energy_j")},
                      "energy_source": cost.get("energy_source"), "of": "generation only (not the features or the probe)"}
    rows = sorted(gather(rows, processes), key=lambda row: row[0])
    if not processes.is_main:
        return None

    features = torch.stack([row[1] for row in rows])
    reference = toybirds_reference(extractor, resolution, ref_num, cache_dir)
    real = toybirds_renders(range(num), resolution)
    real_features = torch.cat([extractor(chunk) for chunk in real.split(500)])
    scores = quality(features, reference, kid_subsets, kid_subset_size)
    floor = quality(real_features, reference, kid_subsets, kid_subset_size)
    sampler_cfg = sampler_cfg or loaded.config.sampler
    adherence = adherence_from_predictions([row[2] for row in rows], prompted)
    hits = adherence_hits([row[2] for row in rows], prompted, list(adherence))
    intervals = adherence_intervals(hits, list(adherence), resamples=adherence_resamples, seed=seed)
    project, fid_of_projected = distance_to(reference["mu"].numpy(), reference["sigma"].numpy())
    intervals["fid_interval"] = list(bootstrap_interval(project(features), fid_of_projected, resamples=fid_resamples,
                                                        seed=seed, recentre=True))
    return {
        **scores, **intervals,
        "fid_real_renders": floor["fid"], "kid_real_renders": floor["kid"],
        "adherence": adherence,
        "adherence_real_renders": adherence_from_predictions(predict(probe, real), prompted),
        "chance": {name: 1 / len(values) for name, values in ATTRIBUTES.items()},
        "extractor": extractor.name, "num_images": num, "ref_num": ref_num, "processes": processes.world_size,
        "sampler": sampler_cfg.get("_target_", "?").rsplit(".", 1)[-1], "steps": int(steps or sampler_cfg.steps),
        "guidance_scale": guidance_scale, "guidance": dict(guidance or {"name": "cfg"}), "seed": seed,
        "guide_ckpt": None if guide is None else str(guide.path),
        "bootstrap": {"level": 0.95, "adherence_resamples": adherence_resamples, "fid_resamples": fid_resamples,
                      "fid": "recentred by the resampling bias", "seed": seed}, "generation_seconds": round(seconds, 2),
        "ckpt_step": int(loaded.payload.get("step", -1)), "cost_per_image": cost_per_image,
        "images": torch.stack([row[3] for row in rows if row[3] is not None]) if keep_images else None,
        "prompts": prompts[:keep_images],
        "per_image": {"features": features.double().cpu().numpy(), "hits": hits,
                      "attributes": list(adherence)} if keep_per_image else None,
    }


def fid_between(extractor, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """FID between two image sets (e.g. two sampler settings), both through `extractor`."""
    return fid_from_features(extractor(images_a), extractor(images_b))
