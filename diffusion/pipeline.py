"""Text-to-image, image-to-image and inpainting, built from the parts: encode prompts -> guided denoiser ->
the sampling loop -> (decode latents) -> images. The library half of `sample.py` (its command layer,
`generate(cfg)`, is diffusion/sampling.py); training's sample grids and the evaluation call it too.

    loaded = load_model(ckpt)
    images = generate_images(loaded.model, loaded.sampler(), ["a red bird"], [0], shape=..., steps=25,
                             guidance_scale=3, decode=loaded.space.decode)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from diffusion.cost import FlopTally
from diffusion.errors import UserError
from diffusion.guidance import guided_denoiser
from diffusion.samplers import Sampler, StepInfo, per_image_normal, sample_loop, start


@torch.no_grad()
def generate_images(
    model,  # DiffusionModel (or anything with .encode and model(x_t, t, cond))
    sampler: Sampler,
    prompts: list[str],  # one per image
    seeds: list[int],  # one per image: its start noise and its steps' noise
    *,
    shape: tuple[int, int, int],  # (C, H, W) of the space the model denoises (pixels or latents)
    steps: int,
    guidance_scale: float = 1.0,
    guidance: dict | None = None,  # the method and its options, e.g. {"name": "apg", "eta": 0.0}; None: classifier-free
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
    generators = [torch.Generator().manual_seed(int(seed) % 2**64) for seed in seeds]  # seed + i may pass 2**64
    labels = None if class_labels is None else torch.as_tensor(class_labels)
    text_conditional = getattr(model, "is_text_conditional", True)
    encode = tally.wrap("encode", model.encode)
    cond = encode(list(prompts) if text_conditional else None, labels, device=device)
    uncond = encode([negative_prompt] * n if text_conditional else None,
                          None if labels is None else torch.full_like(labels, -1), device=device)
    variance_half = getattr(sampler.objective, "learned_variance", False)  # guide the prediction, not the variance
    denoise = tally.wrap("denoise", guided_denoiser(guidance, model, cond, uncond, guidance_scale,
                                                   guided_channels=shape[0] if variance_half else None,
                                                   objective=sampler.objective))

    check_mask_has_init(mask, init)
    noise = per_image_normal(generators, shape, device)  # [N, C, H, W]
    if init is not None:
        init = init.to(device).float().expand(n, *shape)
    x, levels = start(sampler, noise, steps, init, strength)  # the prior, or the init image noised to strength
    inpaint = None
    if mask is not None:  # after every step, the known region is the init image noised to the new level
        keep = 1 - mask.to(device).float()
        inpaint = lambda x, level: x + keep * (sampler.noised(init, noise, level) - x)  # noqa: E731
    x = sample_loop(sampler, denoise, x, levels, generators, callback=callback, inpaint=inpaint)
    images = tally.wrap("decode", decode)(x) if decode is not None else x
    return images.clamp(-1, 1)


def check_mask_has_init(mask, init) -> None:
    if mask is not None and init is None:
        raise UserError("a mask needs the image it masks: give init_image=<picture> with mask=<mask>")


def load_init_image(path, resolution: int | tuple[int, int]) -> torch.Tensor:
    """Any common image file -> [3, R, R] (or [3, height, width] for resolution=(height, width)) in [-1, 1]: the
    largest centred box of that shape, resized; RGBA on white, gray/palette/CMYK converted."""
    from diffusion.data.images import BadImageError, decode_image, refuse_decompression_bombs, uint8_to_model

    path = Path(path)
    if not path.is_file():
        raise UserError(f"init_image not found: {path}")
    try:
        with refuse_decompression_bombs():
            return uint8_to_model(decode_image(path, resolution))
    except BadImageError as error:
        raise UserError(f"init_image {path} is not a readable image ({error}); give a PNG or JPEG file") from None


def load_mask(path, resolution: int | tuple[int, int], space, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """A mask picture -> [1, h, w] in the model's space: 1 where it is white (repaint), 0 where black (keep).
    It is cropped and resized as the init image is (`resolution`: a side or (height, width)), so it must have the
    init image's size; in latent space it is taken down to the latent grid (a latent cell is repainted when any
    of its pixels is)."""
    from diffusion.data.images import BadImageError, decode_image, refuse_decompression_bombs

    path = Path(path)
    if not path.is_file():
        raise UserError(f"mask not found: {path}")
    try:
        with refuse_decompression_bombs():
            pixels = decode_image(path, resolution)  # [3, H, W] uint8
    except BadImageError as error:
        raise UserError(f"mask {path} is not a readable image ({error}); give a black-and-white PNG") from None
    mask = (pixels.float().mean(dim=0, keepdim=True) / 255 > 0.5).float()  # [1, H, W]
    height, width = grid or space.info["shape"][1:]  # grid: the (h, w) sampled, when not the space's native one
    if (height, width) != tuple(mask.shape[1:]):
        mask = torch.nn.functional.adaptive_max_pool2d(mask[None], (height, width))[0]
    return mask


def check_mask_size(mask_path, init_path) -> None:
    """The mask must be the init image's size (a mask drawn for another picture would repaint the wrong place)."""
    with Image.open(mask_path) as m, Image.open(init_path) as i:
        if m.size != i.size:
            raise UserError(f"mask {mask_path} is {m.size[0]}x{m.size[1]} but init_image {init_path} is "
                            f"{i.size[0]}x{i.size[1]}; give a mask of the init image's size (white = repaint)")
