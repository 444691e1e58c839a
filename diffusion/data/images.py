"""Image files in and out: decoding them into training tensors (shared by the on-disk datasets), and
writing model images as PNGs and grids with their generation parameters in the metadata.

One path from a file to a tensor, so CUB birds and image folders agree on colour handling:

    file --open--> PIL image --to_rgb--> 8-bit RGB --crop box + resize--> uint8 [3, R, R]

- Colour: grayscale, palette, CMYK and 16-bit images become 8-bit RGB; transparency is
  composited on white (a transparent background is "nothing", and white is how viewers show it).
- 16-bit samples are scaled (65535 -> 255), never clipped, so a 16-bit PNG keeps its contrast.
- Geometry: a square box (default: the centred square of side = shorter side) is cut out and
  resized to R x R with bicubic filtering in one Pillow call (antialiased when shrinking,
  bicubic upscaling when the box is smaller than R).
- JPEGs are decoded at 1/2, 1/4 or 1/8 scale when the box stays >= R pixels (libjpeg does this
  almost for free), which makes big photos several times cheaper to load.
"""

import contextlib
import json
import math
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from diffusion.errors import write_error

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class BadImageError(Exception):
    """A file that cannot be used as an image; the message is a short reason."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB, transparency composited on white."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        image = Image.fromarray(_to_8bit(image), mode="L")
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> np.ndarray:
    """Scale a 16-bit, 32-bit int or float gray image to uint8 without clipping its range."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        # float images are either in [0, 1] or already in [0, 255]
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    elif image.mode == "I" and (values.size == 0 or values.max() <= 255):
        scale = 1.0  # an "I" image that only uses 8-bit values (e.g. an old 8-bit TIFF)
    else:
        scale = 255.0 / 65535.0  # 16-bit range: 65535 -> 255 exactly
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def center_box(width: int, height: int, aspect: float = 1.0) -> tuple[float, float, float, float]:
    """The largest centred box of `aspect` (its width / height; 1: a square) in an image, as (left, top, right, bottom)."""
    box_width, box_height = min(width, height * aspect), min(height, width / aspect)
    left, top = (width - box_width) / 2, (height - box_height) / 2
    return (left, top, left + box_width, top + box_height)


def square_around_box(
    box: tuple[float, float, float, float],  # (x, y, width, height) of the object
    scale: float,                             # side = scale * the longer side of the box
    width: int,
    height: int,
) -> tuple[float, float, float, float]:
    """A square of side ``scale * max(w, h)`` centred on the box, kept inside the image.

    When the square would cross an edge it is shifted back inside (not shrunk), so the crop stays
    square and the object stays whole; only when the square is larger than the image does it
    shrink to the image's shorter side.
    """
    x, y, box_width, box_height = box
    side = min(max(box_width, box_height) * scale, width, height)
    center_x, center_y = x + box_width / 2, y + box_height / 2
    left = min(max(center_x - side / 2, 0.0), width - side)
    top = min(max(center_y - side / 2, 0.0), height - side)
    return (left, top, left + side, top + side)


def open_checked(path) -> Image.Image:
    """Open an image lazily (header only); a DecompressionBombWarning counts as a bad file.

    The caller should hold `refuse_decompression_bombs()` when this runs, so that Pillow's
    warning for oversized images becomes an error here instead of a line on the console.
    """
    try:
        return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError("more pixels than Pillow's decompression-bomb limit") from None
    except UnidentifiedImageError:
        raise BadImageError("not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise BadImageError(_short_reason(error)) from None


@contextlib.contextmanager
def refuse_decompression_bombs():
    """A context in which Pillow's DecompressionBombWarning is raised as an error.

    It changes the process-wide warning filters for its duration (Python's `catch_warnings`), so
    hold it once around a whole scan in the main thread rather than once per file in threads.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def inspect_image(path) -> tuple[int, int]:
    """Fully decode a file once (cheaply) and return its (width, height); BadImageError if not.

    A truncated JPEG opens fine and fails only when its data is decoded, so this decodes
    everything; JPEGs at 1/8 scale, which still reads every byte of the compressed stream.
    """
    with open_checked(path) as image:
        size = image.size
        if image.format == "JPEG":
            image.draft(None, (max(1, size[0] // 8), max(1, size[1] // 8)))
        _load_rgb(image, apply_orientation=True)  # the same steps decode_image takes
        return size


def decode_image(
    path,
    resolution: int | tuple[int, int],  # the side of the square, or (height, width)
    crop: Callable[[int, int], tuple] | None = None,  # (width, height) -> box; None: the centred box of the size's shape
) -> torch.Tensor:
    """Decode, convert to RGB, crop and resize one file -> uint8 tensor [3, height, width] (a square by default).

    ``crop`` maps the stored image's (width, height) to a (left, top, right, bottom) box in its
    pixels (CUB's boxes are annotated that way). Without it, the EXIF orientation is applied
    first (phone photos) and the largest centred box of the output's shape is used.
    """
    out_height, out_width = (resolution, resolution) if isinstance(resolution, int) else resolution
    longest = max(out_height, out_width)  # a crop of any shape from a picture whose short side is >= this fits
    with open_checked(path) as image:
        width, height = image.size
        box = crop(width, height) if crop is not None else center_box(width, height)
        side = min(box[2] - box[0], box[3] - box[1])
        if image.format == "JPEG" and side >= 2 * longest:
            # ask libjpeg for the smallest scale that keeps the crop >= the output's pixels
            image.draft(None, (math.ceil(width * longest / side), math.ceil(height * longest / side)))
        rgb = _load_rgb(image, apply_orientation=crop is None)
    if crop is None:
        box = center_box(*rgb.size, aspect=out_width / out_height)
    else:  # the box is in full-size pixels; the draft decode may have shrunk the image
        scale_x, scale_y = rgb.size[0] / width, rgb.size[1] / height
        box = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
    return pil_to_uint8(rgb.resize((out_width, out_height), Image.Resampling.BICUBIC, box=box))


def _load_rgb(image: Image.Image, apply_orientation: bool) -> Image.Image:
    """Decode the pixel data and convert to RGB; any failure here means a bad file, not a bug."""
    try:
        image.load()
        if apply_orientation:
            image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except Exception as error:  # Pillow raises many types on damaged or exotic files
        raise BadImageError(_short_reason(error)) from None


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W]."""
    array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def uint8_to_model(image: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] in [0, 255] -> float32 in [-1, 1], the range every model here expects."""
    return image.float().div(127.5).sub(1.0)


def maybe_flip(image: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Mirror left-right with probability 1/2 (torch RNG, so DataLoader workers are seeded)."""
    if enabled and torch.rand(()) < 0.5:
        return image.flip(-1)
    return image


def _short_reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------- writing images


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
    try:
        image.save(temporary, format="PNG", pnginfo=info)
        temporary.replace(path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        failed = write_error(error, path)
        if failed is not None:
            raise failed from None
        raise


def read_png_metadata(path: str | Path) -> dict:
    """The generation parameters stored by `save_png`."""
    with Image.open(path) as image:
        return json.loads(image.text["parameters"])
