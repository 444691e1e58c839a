"""`generate(cfg)`: what `sample.py` runs — the command layer over diffusion/pipeline.py: read the
checkpoint, prompts, init image and mask, check every value, draw in batches, write PNGs and a grid.

    python sample.py ckpt=outputs/.../checkpoints/last.ckpt prompt="a small red bird, facing left" num_images=8
    python sample.py ckpt=... prompt="a blue duck on water" init_image=photo.png strength=0.6
    python sample.py ckpt=... prompt="a red bird" init_image=photo.png mask=mask.png      (white = repaint)
    python sample.py ckpt=... prompt="a red bird" sampler=dpmpp_2m sampler.sigmas=karras steps=10
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from diffusion.cost import EnergyMeter, FlopTally, energy_words, si
from diffusion.data.images import image_grid, save_png, to_pil
from diffusion.errors import UserError, warn
from diffusion.pipeline import check_mask_size, generate_images, load_init_image, load_mask
from diffusion.schema import SEED_RANGE, SampleKeys, validate, values_of, write_back


def cost_line(totals: dict, images: int) -> str:
    """The mean cost of one image, in words (`totals`: summed FLOPs, seconds and joules, the last batch's source)."""
    flops, seconds, joules = (totals[key] / images for key in ("flops", "seconds", "energy_j"))
    return (f"cost per image: {si(flops, 'FLOP')} ({totals['network_calls']} network calls), {seconds:.3g} s, "
            f"{energy_words(joules)} {totals['energy_source']}")


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


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_sampling_values(cfg) -> None:
    """Every value sample.py reads, before any work (the schema: diffusion/schema.py SampleKeys), then the checks
    that join two keys. The checked values replace the typed ones in `cfg` (`use_ema=no` -> false)."""
    keys = validate(SampleKeys, values_of(cfg, SampleKeys))
    write_back(cfg, keys, skip=("prompt", "negative_prompt"))
    if cfg.strength is not None and not cfg.get("init_image"):
        raise UserError(f"strength={cfg.strength} applies to image-to-image: give init_image=<picture> too, or drop strength")
    if Path(str(cfg.out_dir)).is_file():
        raise UserError(f"out_dir={cfg.out_dir} is a file; give a folder for the images (nothing was written)")


def warn_ignored(cfg, loaded, prompts: list[str]) -> None:
    """A key that has no effect on this model is named in one line, never silently dropped."""
    model = loaded.model
    conditional = model.is_text_conditional or model.num_classes is not None
    if not conditional and float(cfg.guidance_scale) != 1.0:
        warn(f"guidance_scale={cfg.guidance_scale} has no effect: this model is unconditional (nothing to guide towards)")
    if not conditional and cfg.get("guidance") and cfg.guidance.get("name", "cfg") != "cfg":
        warn(f"guidance={cfg.guidance.name} has no effect: this model is unconditional")
    if not conditional and any(prompts):
        warn("prompt has no effect: this model is unconditional (it was trained without captions or classes)")
    if cfg.negative_prompt and not model.is_text_conditional:
        warn(f"negative_prompt={cfg.negative_prompt!r} has no effect: this model reads no text")
    if cfg.get("vae_ckpt") and loaded.payload.get("autoencoder") is None:
        warn(f"vae_ckpt={cfg.vae_ckpt} has no effect: this model denoises pixels (it has no autoencoder)")
    tokenizer = getattr(model.text, "tokenizer", None) if model.is_text_conditional else None
    if hasattr(tokenizer, "unknown_words"):  # the scratch word tokenizer: words outside its training captions
        unknown = list(dict.fromkeys(w for p in [*prompts, cfg.negative_prompt or ""] for w in tokenizer.unknown_words(p)))
        if unknown:
            warn(f"the text encoder never saw these prompt words and reads each as <unknown>: {', '.join(unknown[:20])}"
                 + (f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else ""))


def class_labels(cfg, model, data: dict, prompts: list[str], by_class_name: bool) -> list[int] | None:
    """One label per prompt: `class_label=`, or each prompt read as a class name (a class-conditional model
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


GRID_IMAGES = 64  # grid.png shows the first images (a big job's images are written one by one, never all kept)


def image_name(i: int, seed: int) -> str:
    return f"{i:04d}_seed{seed}.png"


def first_clash(out_dir: Path, total: int, seed: int) -> Path | None:
    """An existing file this job would write over: grid.png, or image i's name for some i < total (read off the
    folder's listing, so a job of 10**8 images is checked at once)."""
    if (out_dir / "grid.png").exists():
        return out_dir / "grid.png"
    if not out_dir.is_dir():
        return None
    for existing in out_dir.iterdir():
        index = existing.name.split("_seed", 1)[0]
        if index.isdigit() and int(index) < total and existing.name == image_name(int(index), (seed + int(index)) % SEED_RANGE):
            return existing
    return None


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler's stop) ends the job the way Ctrl-C does: what was written is kept and counted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sampled_size(cfg, loaded) -> tuple[tuple[int, int, int], int, int]:
    """(the shape sampled, image height, image width): the model's native square, or `height` x `width` for
    models that take sizes (SD: multiples of 64, the autoencoder's 8x times the UNet's 8x downsampling)."""
    shape, resolution = tuple(loaded.payload["data"]["shape"]), int(loaded.payload["data"]["resolution"])
    height, width = cfg.get("height"), cfg.get("width")
    if height is None and width is None:
        return shape, resolution, resolution
    multiple = loaded.payload["data"].get("sizes")
    if multiple is None:
        given = "height" if height is not None else "width"
        raise UserError(f"{given}={cfg.get(given)}: this model draws {resolution}x{resolution} only; height= / width= "
                        f"apply to models that take sizes (Stable Diffusion)")
    height, width = height or resolution, width or resolution
    for key, value in (("height", height), ("width", width)):
        if value % multiple:
            raise UserError(f"{key}={value} is not a multiple of {multiple}: this model's images are multiples of "
                            f"{multiple} pixels (e.g. {resolution})")
    factor = resolution // shape[1]  # image pixels per latent (or pixel) cell
    return (shape[0], height // factor, width // factor), height, width


def casts_weights(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `dtype=` casts the weights, not only the arithmetic: on CUDA, yes (bf16 / fp16 halve the memory: SD
    1.5's 1.07 B parameters take 2.1 GB, not 4.3); on the CPU, no (its half-precision kernels are few and slow, so
    the weights stay float32 and autocast alone runs the matrix products in `dtype`)."""
    return device.type == "cuda" and dtype != torch.float32


def cast_networks(loaded, device: torch.device, dtype: torch.dtype, cast: bool | None = None) -> bool:
    """Move the denoiser, the text encoder and the autoencoder to `device`, their weights cast to `dtype` where
    `casts_weights` says (`cast=` forces it either way: the tests cast on the CPU). The autoencoder is cast too and
    decodes in `dtype`, as diffusers' StableDiffusionPipeline(torch_dtype=float16) does: only its SDXL pipelines
    read the VAE's `force_upcast` and decode in float32. Autocast still wraps every call (`generate`), so the
    sampler's float32 x_t meets half-precision weights. Returns whether the weights were cast."""
    cast = casts_weights(device, dtype) if cast is None else cast
    networks = [loaded.model] + ([loaded.space.autoencoder] if hasattr(loaded.space, "autoencoder") else [])
    for network in networks:  # .to(device, dtype) tensor by tensor: the device never holds the float32 copy
        network.to(device=device, dtype=dtype if cast else None)
    return cast


def warn_truncated(model, prompts: list[str]) -> None:
    """One line per prompt the text encoder cuts (CLIP: past 77 tokens), naming the words dropped."""
    tokenizer = getattr(model.text, "tokenizer", None) if model.is_text_conditional else None
    if not hasattr(tokenizer, "dropped"):
        return
    for prompt in dict.fromkeys(prompts):
        dropped = tokenizer.dropped(prompt)
        if dropped:
            print(f"warning: prompt {prompt[:40]!r}... is longer than the text encoder's {tokenizer.max_length} "
                  f"tokens; dropped: {dropped!r}", file=sys.stderr)


def generate(cfg) -> list[Path]:
    """sample.py: load the checkpoint, draw every prompt `num_images` times, write each batch's PNGs as it finishes
    (memory: one batch, and the first GRID_IMAGES for the grid), then the grid. Image i is prompt i // num_images
    with seed (seed + i) mod 2**64."""
    from diffusion.device import resolve_device
    from diffusion.loading import load_model

    if not cfg.get("ckpt"):
        raise UserError("give a checkpoint: python sample.py ckpt=outputs/<date>/<time>/checkpoints/last.ckpt prompt=\"...\"")
    check_sampling_values(cfg)
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    dtype = DTYPES[cfg.get("dtype", "fp32")]
    loaded = load_model(cfg.ckpt, "cpu" if casts_weights(device, dtype) else device, use_ema=cfg.use_ema,
                        vae_ckpt=cfg.get("vae_ckpt"), tokenizer=cfg.get("tokenizer"),
                        text_encoder=cfg.get("text_encoder"), clip_skip=cfg.get("clip_skip"))
    cast_networks(loaded, device, dtype)  # read on the CPU in float32, then cast on the way to the GPU

    def precision():  # the networks (text encoder, denoiser, autoencoder) in `dtype`; the sampler's arithmetic stays float32
        return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    model, train_cfg = loaded.model, loaded.config
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
    warn_ignored(cfg, loaded, prompts)
    shape, height, width = sampled_size(cfg, loaded)
    init, mask = None, None
    if cfg.get("mask") and not cfg.init_image:
        raise UserError("a mask needs the image it masks: give init_image=<picture> with mask=<mask>")
    if cfg.init_image:
        with precision():
            init = loaded.space.encode(load_init_image(cfg.init_image, (height, width))[None].to(device))[0].float()
    if cfg.get("mask"):
        if not Path(cfg.mask).is_file():
            raise UserError(f"mask not found: {cfg.mask}")
        mask = load_mask(cfg.mask, (height, width), loaded.space, grid=shape[1:])
        check_mask_size(cfg.mask, cfg.init_image)
    strength = float(cfg.strength if cfg.strength is not None else (1.0 if mask is not None else 0.6))

    total = len(prompts) * cfg.num_images
    clash = first_clash(out_dir, total, cfg.seed)
    if clash is not None:
        raise UserError(f"{clash} already exists; choose another out_dir (nothing was overwritten)")
    labels = class_labels(cfg, model, loaded.payload["data"], prompts, by_class_name)  # one per prompt

    warn_truncated(model, prompts + [cfg.negative_prompt or ""])
    guidance = OmegaConf.to_container(cfg.guidance) if cfg.get("guidance") else None  # {"name": ..., options}
    common = {"ckpt": str(cfg.ckpt), "ckpt_step": int(loaded.payload["step"]), "use_ema": bool(cfg.use_ema),
              "sampler": sampler.name, "sampler_config": repr(sampler), "steps": steps, "eta": getattr(sampler, "eta", None),
              "guidance_scale": float(cfg.guidance_scale), "negative_prompt": cfg.negative_prompt or "",
              "init_image": str(cfg.init_image) if cfg.init_image else None,
              "strength": strength if cfg.init_image else None, "mask": str(cfg.mask) if cfg.get("mask") else None,
              "class_label": cfg.get("class_label"), "source": loaded.payload.get("source"),
              "height": height, "width": width, "dtype": cfg.get("dtype", "fp32")}
    meter = EnergyMeter(device, cfg.get("cost", {}).get("power_watts"))
    totals = {"flops": 0.0, "seconds": 0.0, "energy_j": 0.0, "network_calls": 0, "energy_source": meter.source}
    written, grid_images = [], []
    bar = tqdm(total=total, desc="sampling", unit="image", disable=total <= cfg.batch_size)
    try:
        with sigterm_as_interrupt(), bar:
            for start in range(0, total, cfg.batch_size):
                indices = range(start, min(start + cfg.batch_size, total))
                batch_prompts = [prompts[i // cfg.num_images] for i in indices]
                seeds = [(cfg.seed + i) % SEED_RANGE for i in indices]
                tally = FlopTally()
                meter.start()
                with precision(), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "the prompt .* is longer than")  # said once above, in one line
                    images = generate_images(
                        model, sampler, batch_prompts, seeds, shape=shape, steps=steps,
                        guidance_scale=float(cfg.guidance_scale), guidance=guidance,
                        negative_prompt=cfg.negative_prompt or "",
                        class_labels=None if labels is None else [labels[i // cfg.num_images] for i in indices],
                        init=init, strength=strength, mask=mask, decode=loaded.space.decode, device=device,
                        tally=tally).float().cpu()
                if not torch.isfinite(images).all():
                    raise UserError(f"the model produced non-finite values (NaN or inf) for seeds {seeds[0]}..{seeds[-1]}; "
                                    f"its weights or this sampler's settings are broken: no image was written for them")
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                cost = {"flops": tally.total / len(indices), "seconds": round(meter.seconds() / len(indices), 4),
                        "energy_j": round(meter.joules() / len(indices), 4), "energy_source": meter.source,
                        "network_calls": tally.calls.get("denoise", 0)}
                for key in ("flops", "seconds", "energy_j"):
                    totals[key] += cost[key] * len(indices)
                totals.update(network_calls=cost["network_calls"], energy_source=meter.source)
                for i, prompt, seed, image in zip(indices, batch_prompts, seeds, images):
                    label = {"class_label": labels[i // cfg.num_images]} if labels is not None else {}
                    path = out_dir / image_name(i, seed)
                    save_png(to_pil(image), path, {"prompt": prompt, "seed": seed, **common, **label, "cost": cost})
                    written.append(path)
                grid_images += list(images[: max(0, GRID_IMAGES - len(grid_images))])
                bar.update(len(indices))
    except KeyboardInterrupt:
        print(f"interrupted: kept the {len(written)} of {total} images written to {out_dir} (no grid.png)", file=sys.stderr)
        raise SystemExit(130) from None
    columns = min(cfg.num_images, GRID_IMAGES) if len(prompts) > 1 else None
    save_png(image_grid(torch.stack(grid_images), columns=columns), out_dir / "grid.png", {"prompts": prompts, **common})
    print(f"wrote {len(written)} images and grid.png to {out_dir}")
    print(cost_line(totals, len(written)))
    return written
