"""`generate(cfg)`: what `sample.py` runs — the command layer over diffusion/pipeline.py: read the
checkpoint, prompts, init image and mask, check every value, draw in batches, write PNGs and a grid.

    python sample.py ckpt=outputs/.../checkpoints/last.ckpt prompt="a small red bird, facing left" num_images=8
    python sample.py ckpt=... prompt="a blue duck on water" init_image=photo.png strength=0.6
    python sample.py ckpt=... prompt="a red bird" init_image=photo.png mask=mask.png      (white = repaint)
    python sample.py ckpt=... prompt="a red bird" sampler=dpmpp_2m sampler.sigmas=karras steps=10
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from diffusion.cost import EnergyMeter, FlopTally, check_power_watts, energy_words, si
from diffusion.data.images import image_grid, save_png, to_pil
from diffusion.errors import UserError
from diffusion.pipeline import check_mask_size, generate_images, load_init_image, load_mask


def cost_line(costs: list[dict]) -> str:
    """The mean cost of one image, in words."""
    n = len(costs)
    flops, seconds, joules = (sum(c[key] for c in costs) / n for key in ("flops", "seconds", "energy_j"))
    return (f"cost per image: {si(flops, 'FLOP')} ({costs[0]['network_calls']} network calls), {seconds:.3g} s, "
            f"{energy_words(joules)} {costs[0]['energy_source']}")


def read_prompts(cfg) -> list[str]:
    """`prompt` (a string or a list) and/or `prompts_file` (one prompt per line)."""
    prompts = []
    if cfg.get("prompts_file"):
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise UserError(f"prompts_file not found: {path}")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if cfg.prompt is not None:
        prompts += [str(p) for p in cfg.prompt] if OmegaConf.is_list(cfg.prompt) else [str(cfg.prompt)]
    return prompts


MAX_SEED = 2**63 - 2**32  # image i gets seed + i; torch's generators take seeds below 2**63 here, with room for i


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_sampling_values(cfg) -> None:
    """Every value sample.py reads, before any work: one line naming the key, the value and what is allowed."""
    checks = [
        ("num_images", cfg.num_images, is_int(cfg.num_images) and cfg.num_images >= 1, "an integer >= 1"),
        ("batch_size", cfg.batch_size, is_int(cfg.batch_size) and cfg.batch_size >= 1, "an integer >= 1"),
        ("seed", cfg.seed, is_int(cfg.seed) and 0 <= cfg.seed < MAX_SEED, f"an integer in [0, {MAX_SEED})"),
        ("guidance_scale", cfg.guidance_scale, is_number(cfg.guidance_scale) and 0 <= cfg.guidance_scale <= 100,
         "a number in [0, 100] (1 = no guidance, 3-7 typical)"),
        ("eta", cfg.eta, cfg.eta is None or (is_number(cfg.eta) and 0 <= cfg.eta <= 1), "a number in [0, 1]"),
        ("strength", cfg.strength, cfg.strength is None or (is_number(cfg.strength) and 0 < cfg.strength <= 1),
         "a number in (0, 1]"),
        ("use_ema", cfg.use_ema, isinstance(cfg.use_ema, bool), "true or false"),
    ]
    for name, value, ok, allowed in checks:
        if not ok:
            raise UserError(f"{name}={value!r} is out of range: use {allowed}")
    if cfg.strength is not None and not cfg.get("init_image"):
        raise UserError(f"strength={cfg.strength} applies to image-to-image: give init_image=<picture> too, or drop strength")
    if Path(str(cfg.out_dir)).is_file():
        raise UserError(f"out_dir={cfg.out_dir} is a file; give a folder for the images (nothing was written)")
    check_power_watts(cfg)
    check_guide_keys(cfg)


def check_guide_keys(cfg) -> None:
    """guidance=auto needs guide_ckpt, and guide_ckpt needs guidance=auto (a key without effect is refused)."""
    method = (cfg.get("guidance") or {}).get("name", "cfg")
    if method == "auto" and not cfg.get("guide_ckpt"):
        raise UserError("guidance=auto guides with a weaker model: give guide_ckpt=<a smaller or earlier checkpoint of "
                        "the same data and objective>")
    if cfg.get("guide_ckpt") and method != "auto":
        raise UserError(f"guide_ckpt={cfg.guide_ckpt} applies to autoguidance: add guidance=auto, or drop guide_ckpt")
    if method == "auto" and cfg.negative_prompt:
        raise UserError("negative_prompt has no effect with guidance=auto (both of its halves are conditional); drop it")


def class_labels(cfg, model, data: dict, prompts: list[str], by_class_name: bool) -> list[int] | None:
    """One label per image: `class_label=`, or each prompt read as a class name (a class-conditional model
    without a text encoder, e.g. DiT: prompt="golden retriever")."""
    from diffusion.data.classes import class_index, class_names_for

    if model.num_classes is None:
        if cfg.get("class_label") is not None:
            raise UserError(f"class_label={cfg.class_label} applies to class-conditional models; this one is not")
        return None
    if by_class_name:
        if cfg.get("class_label") is not None:
            raise UserError("give the class once: class_label=<index> or prompt=<class name>, not both")
        names = class_names_for(model.num_classes, data.get("class_names"))
        if names is None:
            raise UserError(f"this model's {model.num_classes} classes have no names stored: give class_label=<index>")
        return [class_index(prompt, names) for prompt in prompts]
    if cfg.get("class_label") is None:
        return None
    label = cfg.class_label
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < model.num_classes:
        raise UserError(f"class_label={label!r} is out of range: use an integer in [0, {model.num_classes})")
    return [label] * len(prompts)


def generate(cfg) -> list[Path]:
    """sample.py: load the checkpoint, draw every prompt `num_images` times, write PNGs and a grid."""
    from diffusion.device import resolve_device
    from diffusion.loading import load_guide, load_model

    if not cfg.get("ckpt"):
        raise UserError("give a checkpoint: python sample.py ckpt=outputs/<date>/<time>/checkpoints/last.ckpt prompt=\"...\"")
    check_sampling_values(cfg)
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    loaded = load_model(cfg.ckpt, device, use_ema=cfg.use_ema, vae_ckpt=cfg.get("vae_ckpt"))
    model, train_cfg = loaded.model, loaded.config
    guide = load_guide(cfg.guide_ckpt, loaded, device, cfg.use_ema) if cfg.get("guide_ckpt") else None
    sampler_cfg = cfg.sampler if cfg.get("sampler") else train_cfg.sampler
    sampler = loaded.sampler(sampler_cfg, eta=None if cfg.eta is None else float(cfg.eta))
    steps = cfg.steps if cfg.steps is not None else sampler_cfg.steps
    sampler.levels(steps)  # validates steps before any work
    steps = int(steps)

    prompts = read_prompts(cfg)
    by_class_name = model.num_classes is not None and not model.is_text_conditional and bool(prompts)
    if not prompts:
        if model.is_text_conditional:
            raise UserError('give a prompt: prompt="a small red bird with blue wings"')
        if model.num_classes is not None and cfg.get("class_label") is None:
            raise UserError('this model is class-conditional: give class_label=<index> or a class name, e.g. '
                            'prompt="golden retriever" (ImageNet) ')
        prompts = [""]
    shape = tuple(loaded.payload["data"]["shape"])
    resolution = int(loaded.payload["data"]["resolution"])
    init, mask = None, None
    if cfg.get("mask") and not cfg.init_image:
        raise UserError("a mask needs the image it masks: give init_image=<picture> with mask=<mask>")
    if cfg.init_image:
        init = loaded.space.encode(load_init_image(cfg.init_image, resolution)[None].to(device))[0]
    if cfg.get("mask"):
        if not Path(cfg.mask).is_file():
            raise UserError(f"mask not found: {cfg.mask}")
        mask = load_mask(cfg.mask, resolution, loaded.space)
        check_mask_size(cfg.mask, cfg.init_image)
    strength = float(cfg.strength if cfg.strength is not None else (1.0 if mask is not None else 0.6))

    jobs = [(p, cfg.seed + i) for i, p in enumerate(q for q in prompts for _ in range(cfg.num_images))]
    names = [out_dir / f"{i:04d}_seed{seed}.png" for i, (_, seed) in enumerate(jobs)]
    clashes = [p for p in names + [out_dir / "grid.png"] if p.exists()]
    if clashes:
        raise UserError(f"{clashes[0]} already exists; choose another out_dir (nothing was overwritten)")
    labels = class_labels(cfg, model, loaded.payload["data"], [p for p, _ in jobs], by_class_name)

    guidance = OmegaConf.to_container(cfg.guidance) if cfg.get("guidance") else None  # {"name": ..., options}
    images, costs = [], []  # costs: one per image, its share of its batch's FLOPs, seconds and energy
    meter = EnergyMeter(device, cfg.get("cost", {}).get("power_watts"))
    for start in tqdm(range(0, len(jobs), cfg.batch_size), desc="sampling", unit="batch", disable=len(jobs) <= cfg.batch_size):
        batch = jobs[start: start + cfg.batch_size]
        tally = FlopTally()
        meter.start()
        images.append(generate_images(
            model, sampler, [p for p, _ in batch], [s for _, s in batch], shape=shape, steps=steps,
            guidance_scale=float(cfg.guidance_scale), guidance=guidance, negative_prompt=cfg.negative_prompt or "",
            guide=None if guide is None else guide.model,
            class_labels=None if labels is None else labels[start: start + cfg.batch_size],
            init=init, strength=strength, mask=mask, decode=loaded.space.decode, device=device, tally=tally).cpu())
        if not torch.isfinite(images[-1]).all():
            raise UserError(f"the model produced non-finite values (NaN or inf) for seeds {batch[0][1]}..{batch[-1][1]}; "
                            f"its weights or this sampler's settings are broken: no image was written for them")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        costs += [{"flops": tally.total / len(batch), "seconds": round(meter.seconds() / len(batch), 4),
                   "energy_j": round(meter.joules() / len(batch), 4), "energy_source": meter.source,
                   "network_calls": tally.calls.get("denoise", 0)}] * len(batch)
    images = torch.cat(images)

    common = {"ckpt": str(cfg.ckpt), "ckpt_step": int(loaded.payload["step"]), "use_ema": bool(cfg.use_ema),
              "sampler": sampler.name, "sampler_config": repr(sampler), "steps": steps, "eta": getattr(sampler, "eta", None),
              "guidance_scale": float(cfg.guidance_scale), "negative_prompt": cfg.negative_prompt or "",
              "guidance": (guidance or {}).get("name", "cfg"), "guide_ckpt": str(cfg.guide_ckpt) if guide else None,
              "init_image": str(cfg.init_image) if cfg.init_image else None,
              "strength": strength if cfg.init_image else None, "mask": str(cfg.mask) if cfg.get("mask") else None,
              "class_label": cfg.get("class_label"), "source": loaded.payload.get("source")}
    for i, ((prompt, seed), image, path, cost) in enumerate(zip(jobs, images, names, costs)):
        label = {"class_label": labels[i]} if labels is not None else {}
        save_png(to_pil(image), path, {"prompt": prompt, "seed": seed, **common, **label, "cost": cost})
    save_png(image_grid(images, columns=cfg.num_images if len(prompts) > 1 else None), out_dir / "grid.png",
             {"prompts": prompts, **common})
    print(f"wrote {len(names)} images and grid.png to {out_dir}")
    print(cost_line(costs))
    return names
