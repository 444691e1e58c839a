"""Text-to-image and image-to-image, built from the parts: encode prompts -> guided denoiser -> sampler loop
-> (decode latents) -> images. `generate(cfg)` is what `sample.py` runs.

    python sample.py ckpt=outputs/.../checkpoints/last.ckpt prompt="a small red bird, facing left" num_images=8
    python sample.py ckpt=... prompt="a blue duck on water" init_image=photo.png strength=0.6
    python sample.py ckpt=... prompt="a red bird" init_image=photo.png mask=mask.png      (white = repaint)
    python sample.py ckpt=... prompt="a red bird" sampler=dpmpp_2m sampler.sigmas=karras steps=10
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm.auto import tqdm

from diffusion.config import sampler_name
from diffusion.cost import EnergyMeter, FlopTally, check_power_watts, energy_words, si
from diffusion.errors import UserError
from diffusion.guidance import classifier_free_guidance
from diffusion.sampling import StepInfo, per_image_normal
from diffusion.schedulers import Scheduler


@torch.no_grad()
def generate_images(
    model,  # DiffusionModel (or anything with .encode and model(x_t, t, cond))
    scheduler: Scheduler,
    prompts: list[str],  # one per image
    seeds: list[int],  # one per image: its start noise and its steps' noise
    *,
    shape: tuple[int, int, int],  # (C, H, W) of the space the model denoises (pixels or latents)
    steps: int,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    negative_prompt: str = "",
    class_labels: list[int] | None = None,
    init: torch.Tensor | None = None,  # [C, H, W] or [N, C, H, W] image (already in model space) for image-to-image
    strength: float = 1.0,
    mask: torch.Tensor | None = None,  # [1, H, W] in model space, 1 = repaint, 0 = keep `init` (inpainting)
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,  # latents -> images
    device="cpu",
    callback: Callable[[StepInfo], None] | None = None,
    tally: FlopTally | None = None,  # counts the FLOPs of the text encoder, every denoiser call and the decoder
) -> torch.Tensor:
    """Images [N, 3, H, W] in [-1, 1] for one batch. Every image depends on its seed only."""
    n = len(prompts)
    tally = tally if tally is not None else FlopTally(enabled=False)
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    labels = None if class_labels is None else torch.as_tensor(class_labels)
    text_conditional = getattr(model, "is_text_conditional", True)
    encode = tally.wrap("encode", model.encode)
    cond = encode(list(prompts) if text_conditional else None, labels, device=device)
    uncond = encode([negative_prompt] * n if text_conditional else None,
                          None if labels is None else torch.full_like(labels, -1), device=device)
    denoise = tally.wrap("denoise", classifier_free_guidance(model, cond, uncond, guidance_scale))

    noise = per_image_normal(generators, shape, device)  # [N, C, H, W]
    inpaint = None
    if init is None:
        timesteps = scheduler.timesteps(steps)
        x = scheduler.prior(noise, timesteps)  # DDIM: x_T ~ N(0, I); sigma solvers: that x_T in the sigma view
    else:
        timesteps = scheduler.img2img_timesteps(steps, strength)
        init = init.to(device).float().expand(n, *shape)
        x = scheduler.img2img_start(init, noise, timesteps)
        if mask is not None:  # after every step, the known region is the init image noised to the new level
            keep = 1 - mask.to(device).float()

            def inpaint(x, level):
                return x + keep * (scheduler.noised(init, noise, level) - x)
    check_mask_has_init(mask, init)
    x = scheduler.run(denoise, timesteps, x, generators, eta=eta, callback=callback, inpaint=inpaint)
    images = tally.wrap("decode", decode)(x) if decode is not None else x
    return images.clamp(-1, 1)


def cost_line(costs: list[dict]) -> str:
    """The mean cost of one image, in words."""
    n = len(costs)
    flops, seconds, joules = (sum(c[key] for c in costs) / n for key in ("flops", "seconds", "energy_j"))
    return (f"cost per image: {si(flops, 'FLOP')} ({costs[0]['network_calls']} network calls), {seconds:.3g} s, "
            f"{energy_words(joules)} {costs[0]['energy_source']}")


def check_mask_has_init(mask, init) -> None:
    if mask is not None and init is None:
        raise UserError("a mask needs the image it masks: give init_image=<picture> with mask=<mask>")


# ---------------------------------------------------------------------------------------------- image files


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] in [-1, 1] -> an 8-bit RGB PIL image."""
    array = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB")


def image_grid(images: torch.Tensor, columns: int | None = None, padding: int = 2) -> Image.Image:
    """[N, 3, H, W] in [-1, 1] -> one PIL image with the images in rows (white gaps between them)."""
    n, _, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = Image.new("RGB", (columns * (width + padding) + padding, rows * (height + padding) + padding), "white")
    for i, image in enumerate(images):
        grid.paste(to_pil(image), (padding + (i % columns) * (width + padding), padding + (i // columns) * (height + padding)))
    return grid


def save_png(image: Image.Image, path: Path, metadata: dict | None = None) -> None:
    """Write a PNG with `metadata` in its text chunks ("parameters" holds all of it as JSON)."""
    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, str(value))
    if metadata:
        info.add_text("parameters", json.dumps(metadata))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    image.save(temporary, format="PNG", pnginfo=info)
    temporary.replace(path)


def read_png_metadata(path: str | Path) -> dict:
    """The generation parameters stored by `save_png`."""
    with Image.open(path) as image:
        return json.loads(image.text["parameters"])


# ---------------------------------------------------------------------------------------------- sample.py


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


def check_sampling_values(cfg) -> None:
    checks = [
        ("num_images", cfg.num_images, isinstance(cfg.num_images, int) and cfg.num_images >= 1, "an integer >= 1"),
        ("batch_size", cfg.batch_size, isinstance(cfg.batch_size, int) and cfg.batch_size >= 1, "an integer >= 1"),
        ("seed", cfg.seed, isinstance(cfg.seed, int) and cfg.seed >= 0, "an integer >= 0"),
        ("guidance_scale", cfg.guidance_scale, isinstance(cfg.guidance_scale, (int, float)) and 0 <= cfg.guidance_scale <= 100,
         "a number in [0, 100] (1 = no guidance, 3-7 typical)"),
        ("eta", cfg.eta, cfg.eta is None or (isinstance(cfg.eta, (int, float)) and 0 <= cfg.eta <= 1), "a number in [0, 1]"),
        ("strength", cfg.strength, cfg.strength is None or (isinstance(cfg.strength, (int, float)) and 0 < cfg.strength <= 1),
         "a number in (0, 1]"),
    ]
    for name, value, ok, allowed in checks:
        if not ok:
            raise UserError(f"{name}={value!r} is out of range: use {allowed}")
    check_power_watts(cfg)


def load_init_image(path, resolution: int) -> torch.Tensor:
    """Any common image file -> [3, R, R] in [-1, 1] (centre square, resized; RGBA on white, gray/palette/CMYK converted)."""
    from diffusion.data.images import BadImageError, decode_image, refuse_decompression_bombs, uint8_to_model

    path = Path(path)
    if not path.is_file():
        raise UserError(f"init_image not found: {path}")
    try:
        with refuse_decompression_bombs():
            return uint8_to_model(decode_image(path, resolution))
    except BadImageError as error:
        raise UserError(f"init_image {path} is not a readable image ({error}); give a PNG or JPEG file") from None


def load_mask(path, resolution: int, space) -> torch.Tensor:
    """A mask picture -> [1, h, w] in the model's space: 1 where it is white (repaint), 0 where black (keep).
    It must have the init image's size after the same centre-square resize, i.e. any size with the
    init image's shape; in latent space it is taken down to the latent grid (a latent cell is repainted
    when any of its pixels is)."""
    from diffusion.data.images import BadImageError, decode_image, refuse_decompression_bombs

    path = Path(path)
    if not path.is_file():
        raise UserError(f"mask not found: {path}")
    try:
        with refuse_decompression_bombs():
            pixels = decode_image(path, resolution)  # [3, R, R] uint8
    except BadImageError as error:
        raise UserError(f"mask {path} is not a readable image ({error}); give a black-and-white PNG") from None
    mask = (pixels.float().mean(dim=0, keepdim=True) / 255 > 0.5).float()  # [1, R, R]
    height, width = space.info["shape"][1:]
    if (height, width) != tuple(mask.shape[1:]):
        mask = torch.nn.functional.adaptive_max_pool2d(mask[None], (height, width))[0]
    return mask


def check_mask_size(mask_path, init_path) -> None:
    """The mask must be the init image's size (a mask drawn for another picture would repaint the wrong place)."""
    with Image.open(mask_path) as m, Image.open(init_path) as i:
        if m.size != i.size:
            raise UserError(f"mask {mask_path} is {m.size[0]}x{m.size[1]} but init_image {init_path} is "
                            f"{i.size[0]}x{i.size[1]}; give a mask of the init image's size (white = repaint)")


def generate(cfg) -> list[Path]:
    """sample.py: load the checkpoint, draw every prompt `num_images` times, write PNGs and a grid."""
    from diffusion.loading import load_diffusion_checkpoint
    from diffusion.training.runtime import resolve_device

    if not cfg.get("ckpt"):
        raise UserError("give a checkpoint: python sample.py ckpt=outputs/<date>/<time>/checkpoints/last.ckpt prompt=\"...\"")
    check_sampling_values(cfg)
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    loaded = load_diffusion_checkpoint(cfg.ckpt, device, use_ema=cfg.use_ema, vae_ckpt=cfg.get("vae_ckpt"))
    model, train_cfg = loaded.model, loaded.config
    sampler_cfg = cfg.sampler if cfg.get("sampler") else train_cfg.sampler
    scheduler = loaded.scheduler(sampler_cfg)
    steps = int(cfg.steps if cfg.steps is not None else sampler_cfg.steps)
    eta = float(cfg.eta if cfg.eta is not None else (sampler_cfg.get("eta") or 0.0))
    scheduler.timesteps(steps)  # validates steps before any work

    prompts = read_prompts(cfg)
    if not prompts:
        if model.is_text_conditional:
            raise UserError('give a prompt: prompt="a small red bird with blue wings"')
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
    labels = [int(cfg.class_label)] * len(jobs) if cfg.get("class_label") is not None else None

    images, costs = [], []  # costs: one per image, its share of its batch's FLOPs, seconds and energy
    meter = EnergyMeter(device, cfg.get("cost", {}).get("power_watts"))
    for start in tqdm(range(0, len(jobs), cfg.batch_size), desc="sampling", unit="batch", disable=len(jobs) <= cfg.batch_size):
        batch = jobs[start: start + cfg.batch_size]
        tally = FlopTally()
        meter.start()
        images.append(generate_images(
            model, scheduler, [p for p, _ in batch], [s for _, s in batch], shape=shape, steps=steps, eta=eta,
            guidance_scale=float(cfg.guidance_scale), negative_prompt=cfg.negative_prompt or "",
            class_labels=None if labels is None else labels[start: start + cfg.batch_size],
            init=init, strength=strength, mask=mask, decode=loaded.space.decode, device=device, tally=tally).cpu())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        costs += [{"flops": tally.total / len(batch), "seconds": round(meter.seconds() / len(batch), 4),
                   "energy_j": round(meter.joules() / len(batch), 4), "energy_source": meter.source,
                   "network_calls": tally.calls.get("denoise", 0)}] * len(batch)
    images = torch.cat(images)

    common = {"ckpt": str(cfg.ckpt), "ckpt_step": int(loaded.payload["step"]), "use_ema": bool(cfg.use_ema),
              "sampler": sampler_name(scheduler), "sampler_config": repr(scheduler), "steps": steps, "eta": eta,
              "guidance_scale": float(cfg.guidance_scale), "negative_prompt": cfg.negative_prompt or "",
              "init_image": str(cfg.init_image) if cfg.init_image else None,
              "strength": strength if cfg.init_image else None, "mask": str(cfg.mask) if cfg.get("mask") else None,
              "class_label": cfg.get("class_label")}
    for (prompt, seed), image, path, cost in zip(jobs, images, names, costs):
        save_png(to_pil(image), path, {"prompt": prompt, "seed": seed, **common, "cost": cost})
    save_png(image_grid(images, columns=cfg.num_images if len(prompts) > 1 else None), out_dir / "grid.png",
             {"prompts": prompts, **common})
    print(f"wrote {len(names)} images and grid.png to {out_dir}")
    print(cost_line(costs))
    return names
