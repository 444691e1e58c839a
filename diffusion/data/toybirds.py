"""toy-birds: procedural captioned birds, drawn with Pillow, so every caption's truth is known.

Image `i` of a split is a pure function of (split seed, i, resolution): its attributes, its
caption and its jitter each come from their own random stream keyed by (split seed, i), so
asking for the caption never renders and the same bird is drawn at every resolution.

    python -m diffusion.data.toybirds --out samples/ --num 64 --resolution 32

writes 00000.png ... and metadata.jsonl (file_name, text and every attribute by name).
"""

import argparse
import functools
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from tqdm import tqdm

from diffusion.data.toybirds_captions import (  # noqa: F401  (re-exported for importers)
    ATTRIBUTES, BACKGROUNDS, COLOURS, FACING, POSES, SIZES, SPECIES,
    attribute_probabilities, make_caption, parse_prompt, random_attributes, random_prompt,
    sample_attributes, uniform_probabilities, vocabulary_captions,
)
from diffusion.errors import UserError, check_choice

# Bump when a drawing change would make an old trained probe (or cached renders) wrong.
RENDERER_VERSION = 1

# Chosen far apart in RGB so that a classifier and a person can tell them at 32x32 px.
COLOUR_RGB = {
    "red": (215, 30, 35), "orange": (255, 135, 0), "yellow": (250, 225, 40),
    "green": (40, 165, 55), "blue": (35, 75, 225), "purple": (140, 45, 185),
    "black": (20, 20, 22), "white": (245, 245, 245),
}
# Sky gradients (top, bottom), water colour and the bird's outline per background. The outline
# is light at night so black birds show, dark by day so white birds show.
SKY = {
    "day": ((90, 155, 225), (185, 220, 245)),
    "sunset": ((75, 50, 115), (245, 150, 90)),
    "night": ((6, 8, 28), (25, 35, 75)),
}
WATER = {"day": (40, 95, 155), "sunset": (115, 70, 105), "night": (20, 45, 90)}
OUTLINE = {"day": (25, 25, 30), "sunset": (25, 25, 30), "night": (175, 175, 185)}
BRANCH_RGB = (100, 65, 35)
LEG_RGB = (85, 70, 50)
EYE_RGB = (15, 15, 15)
# Bird size in canvas widths per bird unit; small and large keep a clear gap after jitter.
SIZE_SCALE = {"small": 0.4, "large": 0.64}


# ---- bird shapes, facing right, in bird units (y down), built once at import ----

def _ellipse(cx, cy, rx, ry, degrees=0.0, points=20):
    angle = np.linspace(0, 2 * np.pi, points, endpoint=False)
    x, y = rx * np.cos(angle), ry * np.sin(angle)
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _capsule(p, q, radius, points=8):
    """A thick segment from p to q with round ends (for necks)."""
    (px, py), (qx, qy) = p, q
    heading = math.atan2(qy - py, qx - px)
    half = np.linspace(-np.pi / 2, np.pi / 2, points)
    end_q = [(qx + radius * math.cos(heading + a), qy + radius * math.sin(heading + a)) for a in half]
    end_p = [(px - radius * math.cos(heading + a), py - radius * math.sin(heading + a)) for a in half]
    return np.array(end_q + end_p)


def _poly(*points):
    return np.array(points, dtype=float)


# Each species: silhouette parts in body colour (outlined as one shape), the beak, the eye,
# the folded wing, the legs (segments), where raised wings attach, and how deep the feet and
# the waterline sit below the body centre.
SHAPES = {
    "songbird": dict(
        body=[_poly((-0.18, 0.0), (-0.64, 0.2), (-0.6, 0.3), (-0.12, 0.14)),
              _ellipse(0.0, 0.02, 0.34, 0.22, -20), _ellipse(0.28, -0.2, 0.17, 0.16)],
        beak=_poly((0.4, -0.26), (0.6, -0.19), (0.41, -0.12)), beak_rgb=(60, 55, 50),
        eye=(0.32, -0.23, 0.045), wing=_ellipse(-0.08, 0.0, 0.27, 0.14, -20),
        legs=[((0.0, 0.18), (0.0, 0.38)), ((0.09, 0.16), (0.1, 0.38))],
        wing_root=(0.0, -0.1), feet=0.38, waterline=0.1),
    "duck": dict(
        body=[_ellipse(0.0, 0.05, 0.44, 0.2), _poly((-0.28, -0.04), (-0.56, -0.16), (-0.4, 0.12)),
              _capsule((0.28, 0.0), (0.3, -0.28), 0.09), _ellipse(0.31, -0.3, 0.15, 0.13)],
        beak=_ellipse(0.5, -0.26, 0.13, 0.05, 8), beak_rgb=(235, 165, 40),
        eye=(0.34, -0.33, 0.04), wing=_ellipse(-0.07, 0.01, 0.29, 0.12, -8),
        legs=[((0.0, 0.22), (0.0, 0.36)), ((0.1, 0.22), (0.1, 0.36))],
        wing_root=(-0.02, -0.1), feet=0.36, waterline=0.12),
    "owl": dict(
        body=[_ellipse(0.0, 0.08, 0.27, 0.34), _poly((-0.12, 0.32), (-0.34, 0.5), (0.02, 0.42)),
              _ellipse(0.04, -0.3, 0.25, 0.21), _poly((-0.17, -0.4), (-0.18, -0.56), (-0.05, -0.47)),
              _poly((0.14, -0.48), (0.25, -0.6), (0.27, -0.4))],
        beak=_poly((0.19, -0.28), (0.32, -0.21), (0.17, -0.15)), beak_rgb=(60, 55, 50),
        eye=(0.17, -0.33, 0.04), eye_discs=[(0.0, -0.32, 0.08), (0.17, -0.33, 0.08)],
        wing=_ellipse(-0.1, 0.02, 0.18, 0.26, 12),
        legs=[((-0.05, 0.38), (-0.05, 0.5)), ((0.08, 0.38), (0.08, 0.5))],
        wing_root=(-0.16, 0.02), feet=0.5, waterline=0.24),
    "heron": dict(
        body=[_ellipse(-0.05, 0.0, 0.33, 0.16, -15), _poly((-0.3, 0.04), (-0.54, 0.14), (-0.3, 0.14)),
              _capsule((0.16, -0.06), (0.3, -0.3), 0.055), _capsule((0.3, -0.3), (0.24, -0.46), 0.05),
              _capsule((0.24, -0.46), (0.31, -0.56), 0.05), _ellipse(0.32, -0.58, 0.085, 0.075)],
        beak=_poly((0.37, -0.62), (0.72, -0.53), (0.37, -0.54)), beak_rgb=(205, 175, 80),
        eye=(0.33, -0.6, 0.035), wing=_ellipse(-0.08, -0.02, 0.28, 0.12, -15),
        legs=[((-0.02, 0.1), (-0.02, 0.58)), ((0.07, 0.1), (0.09, 0.58))],
        wing_root=(-0.04, -0.1), feet=0.58, waterline=0.3, scale=0.88),
}
# A raised wing for flight, relative to the wing root: swept back and up.
RAISED_WING = _poly((0.14, 0.02), (-0.14, 0.02), (-0.36, -0.4), (-0.3, -0.66), (-0.12, -0.58), (0.08, -0.3))


# ---- drawing ----

@functools.lru_cache(maxsize=32)
def _sky(background: str, size: int) -> Image.Image:
    """The background gradient for a canvas size; it never changes, so it is made once."""
    top, bottom = (np.array(c, dtype=np.float32) for c in SKY[background])
    mix = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    rows = np.broadcast_to(top * (1 - mix) + bottom * mix, (size, size, 3))
    return Image.fromarray(np.ascontiguousarray(rows).astype(np.uint8))


def _supersample(resolution: int) -> int:
    # Draw at 4x where it is cheap; large images need less help to look smooth.
    return 4 if resolution <= 64 else 3 if resolution <= 128 else 2


def _box(centre, radius):
    x, y = centre
    return [x - radius, y - radius, x + radius, y + radius]


def _shade(rgb, factor):
    return tuple(int(min(255, c * factor)) for c in rgb)


def _draw_sky_lights(draw, background, j, rng, size, factor):
    """Sun at the horizon at sunset, moon and faint stars at night, nothing by day."""
    if background == "sunset":
        draw.ellipse(_box(((0.1 + 0.8 * j[0]) * size, 0.72 * size), 0.07 * size), fill=(255, 215, 120))
    if background == "night":
        draw.ellipse(_box(((0.1 + 0.8 * j[0]) * size, (0.12 + 0.1 * j[1]) * size), 0.07 * size),
                     fill=(235, 235, 210))
        for x, y in rng.random((6, 2)) * (size, 0.45 * size):
            draw.ellipse(_box((x, y), 0.35 * factor), fill=(200, 200, 170))


def _draw_bird(draw, a, place, scale, line, outline, factor):
    """The bird in its pose; `place` maps bird units to canvas pixels (facing included)."""
    shape = SHAPES[a["species"]]
    wing_rgb = COLOUR_RGB[a["wing_colour"]]
    leg_width = max(1, round(0.035 * scale))
    if a["pose"] == "perched":
        for top, bottom in shape["legs"]:
            draw.line(place([top, bottom]), fill=LEG_RGB, width=leg_width)
    if a["pose"] == "flying":  # the far wing, behind the body and a little darker
        far = RAISED_WING * [1.0, 0.9] + shape["wing_root"] + (0.1, 0.02)
        draw.polygon(place(far), fill=_shade(wing_rgb, 0.8), outline=outline, width=line)
        if a["species"] == "heron":  # herons fly with the legs trailing behind
            draw.line(place([(-0.2, 0.08), (-0.7, 0.16)]), fill=LEG_RGB, width=leg_width)
    # The silhouette: every part in the outline colour, thickened, then filled on top, so the
    # outline runs around the whole bird and not between its parts.
    for part in shape["body"] + [shape["beak"]]:
        points = place(part)
        draw.polygon(points, fill=outline)
        draw.line(points + points[:2], fill=outline, width=2 * line)
    for part in shape["body"]:
        draw.polygon(place(part), fill=COLOUR_RGB[a["body_colour"]])
    draw.polygon(place(shape["beak"]), fill=shape["beak_rgb"])
    wing = shape["wing"] if a["pose"] != "flying" else RAISED_WING + shape["wing_root"]
    # A thin border in a darker shade: it shows the wing on a same-coloured body without eating
    # the few pixels of colour a small bird's folded wing has at 32 px.
    border = _shade(wing_rgb, 0.55) if a["wing_colour"] != "black" else (90, 90, 90)
    draw.polygon(place(wing), fill=wing_rgb, outline=border, width=max(1, line // 2))
    # Owls look at the viewer with two big pale discs; the pupils sit toward the facing side.
    discs = shape.get("eye_discs", ())
    for x, y, r in discs:
        draw.ellipse(_box(place([(x, y)]), r * scale), fill=(240, 240, 225), outline=outline, width=factor)
    eye_x, eye_y, eye_r = shape["eye"]
    pupils = [(x + 0.03, y) for x, y, _ in discs] or [(eye_x, eye_y)]
    eye_rgb = outline if a["body_colour"] == "black" and not discs else EYE_RGB
    for x, y in pupils:
        draw.ellipse(_box(place([(x, y)]), eye_r * scale), fill=eye_rgb)


def render(attributes: dict, resolution: int, rng_or_seed) -> np.ndarray:
    """Draw one bird: a uint8 array [resolution, resolution, 3].

    `attributes` maps every attribute name to a value (a string, or its index in ATTRIBUTES).
    The jitter (position, scale, tilt, brightness) comes from `rng_or_seed`, and uses the same
    draws at every resolution, so the same seed gives the same scene at 32 and 64 px.
    """
    if resolution < 16:
        raise ValueError(f"toy-birds needs a resolution of at least 16, got {resolution}")
    a = {k: (v if isinstance(v, str) else ATTRIBUTES[k][int(v)]) for k, v in attributes.items()}
    rng = np.random.default_rng(rng_or_seed)
    j = rng.random(16)  # every jitter draw at once, so the stream is the same for every scene
    factor = _supersample(resolution)
    size = resolution * factor
    image = _sky(a["background"], size).copy()
    draw = ImageDraw.Draw(image)
    _draw_sky_lights(draw, a["background"], j, rng, size, factor)

    shape = SHAPES[a["species"]]
    scale = SIZE_SCALE[a["size"]] * shape.get("scale", 1.0) * (0.92 + 0.16 * j[2]) * size
    mirror = -1.0 if a["facing"] == "left" else 1.0
    tilt = math.radians((j[3] - 0.5) * (24 if a["pose"] == "flying" else 14))
    centre_x = (0.5 + (j[4] - 0.5) * 0.16) * size
    # The feet stand on the branch; the waterline cuts the body; a flying bird sits higher.
    ground = (0.74 if a["pose"] == "perched" else 0.64) * size + 0.08 * j[5] * size
    depth = {"perched": shape["feet"], "on water": shape["waterline"]}.get(a["pose"])
    centre_y = ground - depth * scale if depth is not None else (0.56 + 0.08 * j[5]) * size
    # Bird units -> canvas pixels: mirror for facing, tilt, scale, move.
    c, s = math.cos(tilt), math.sin(tilt)
    matrix = np.array([[c * mirror, -s], [s * mirror, c]]) * scale
    offset = np.array([centre_x, centre_y])

    def place(points):
        return (np.asarray(points) @ matrix.T + offset).ravel().tolist()

    line = max(factor, round(0.028 * size))  # outline about 1 px at 32 px, thicker when larger
    if a["pose"] == "perched":  # a branch from the edge behind the bird to past its feet
        start, reach = (0.0 if mirror > 0 else size), (0.3 + 0.2 * j[6]) * size * mirror
        draw.line([start, ground + line, centre_x + reach, ground + line - 0.04 * size * j[7]],
                  fill=BRANCH_RGB, width=round(0.05 * size))
    _draw_bird(draw, a, place, scale, line, OUTLINE[a["background"]], factor)
    if a["pose"] == "on water":  # water drawn last hides the bird's lower body
        draw.rectangle([0, ground, size, size], fill=WATER[a["background"]])
        draw.line([0, ground, size, ground], fill=_shade(WATER[a["background"]], 1.6), width=line)

    small = np.asarray(image.reduce(factor), dtype=np.float32)  # box filter: exact block average
    # Slight global brightness and colour-balance jitter, so no two renders are pixel twins.
    small = small * (0.94 + 0.12 * j[8]) + (j[9:12] - 0.5) * 12
    return np.clip(small + 0.5, 0, 255).astype(np.uint8)


# ---- the dataset ----

SPLITS = ("train", "val", "test")
UNLIMITED_LENGTH = 1_000_000  # the length reported when num_images is None: renders on demand
MAX_CACHE_BYTES = 1024**3  # bigger finite sets are re-rendered instead of kept in memory
VOCABULARY_SAMPLE = 20_000  # captions sampled by all_captions() for an unlimited split
# Separate random streams per image, so captions and attributes never depend on drawing.
_ATTRIBUTE_STREAM, _JITTER_STREAM, _CAPTION_STREAM = 0, 1, 2


def split_seed(seed: int, split: str) -> int:
    """The seed of one split, derived from the config seed so splits never share images."""
    check_choice("split", split, SPLITS)
    return int(np.random.SeedSequence([seed, SPLITS.index(split)]).generate_state(1)[0])


class ToyBirds(Dataset):
    """Procedural captioned birds; item i is {"image", "text", "label": -1, "attributes"}.

    "attributes" maps each attribute name to the index of its value in ATTRIBUTES, so the
    default collate turns it into a dict of LongTensors. There is no random flip on purpose:
    mirroring a bird changes its facing, which its caption states.
    """

    num_classes = None
    class_names = None

    def __init__(
        self,
        split: str = "train",
        resolution: int = 32,          # any size >= 16; drawn large and box-filtered down
        num_images: int | None = None,  # distinct images; None = a fresh bird for every index
        seed: int = 0,                 # each split derives its own seed from this one
        attribute_weights=None,        # skew for bias studies, see attribute_probabilities
        cache: bool = True,            # keep finite sets in memory after the first render
    ):
        if int(resolution) < 16:
            raise UserError(f"toy-birds resolution must be at least 16, got {resolution}")
        if num_images is not None and int(num_images) < 1:
            raise UserError(f"toy-birds needs num_images >= 1 (or null for unlimited), got {num_images}")
        if int(seed) < 0:
            raise UserError(f"toy-birds seed must be non-negative, got {seed}")
        self.split = split
        self.resolution = int(resolution)
        self.num_images = None if num_images is None else int(num_images)
        self.seed = int(seed)
        self.split_seed = split_seed(self.seed, split)
        self.probabilities = attribute_probabilities(attribute_weights)
        self._length = UNLIMITED_LENGTH if num_images is None else self.num_images
        self._images = None
        bytes_needed = self._length * 3 * self.resolution**2
        if cache and self.num_images is not None and bytes_needed <= MAX_CACHE_BYTES:
            # Filled lazily, so construction is instant; each DataLoader worker fills its own copy.
            self._images = torch.empty(self._length, 3, self.resolution, self.resolution, dtype=torch.uint8)
            self._rendered = torch.zeros(self._length, dtype=torch.bool)

    def __len__(self) -> int:
        return self._length

    def _stream(self, index: int, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.split_seed, index, purpose])

    def _check(self, index: int) -> int:
        index = int(index) + (self._length if index < 0 else 0)
        if not 0 <= index < self._length:
            raise IndexError(f"toy-birds index {index} out of range for length {self._length}")
        return index

    def attributes(self, index: int) -> dict[str, str]:
        return sample_attributes(self._stream(self._check(index), _ATTRIBUTE_STREAM), self.probabilities)

    def caption(self, index: int) -> str:
        return make_caption(self.attributes(index), self._stream(self._check(index), _CAPTION_STREAM))

    def image(self, index: int, attributes: dict | None = None) -> torch.Tensor:
        """The uint8 image [3, H, W] of item `index` (a view into the cache: do not modify).
        `attributes`, when the caller already has them, saves drawing them again."""
        index = self._check(index)
        if self._images is not None and self._rendered[index]:
            return self._images[index]
        attributes = attributes or self.attributes(index)
        pixels = render(attributes, self.resolution, self._stream(index, _JITTER_STREAM))
        image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (3, H, W)
        if self._images is not None:
            self._images[index] = image
            self._rendered[index] = True
        return image

    def __getitem__(self, index: int) -> dict:
        index = self._check(index)
        attributes = self.attributes(index)
        return {
            "image": self.image(index, attributes).float() / 127.5 - 1.0,  # (3, H, W) in [-1, 1]
            "text": make_caption(attributes, self._stream(index, _CAPTION_STREAM)),
            "label": -1,
            "attributes": {name: ATTRIBUTES[name].index(value) for name, value in attributes.items()},
        }

    def all_captions(self) -> list[str]:
        """Every caption of a finite split; for an unlimited one, the first VOCABULARY_SAMPLE
        captions plus captions that use every word the generator can write."""
        if self.num_images is not None:
            return [self.caption(i) for i in range(self.num_images)]
        return [self.caption(i) for i in range(VOCABULARY_SAMPLE)] + list(vocabulary_captions())


# ---- command line ----

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other user error
        raise UserError(message)


def write_images(out: Path, num: int, resolution: int, split: str = "train", seed: int = 0,
                 overwrite: bool = False) -> None:
    """Render `num` birds to out/00000.png ... and out/metadata.jsonl."""
    dataset = ToyBirds(split=split, resolution=resolution, num_images=num, seed=seed, cache=False)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} is not empty; pass --overwrite or choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # with --overwrite, no stale image outlives its metadata
        if old.stem.isdigit():
            old.unlink()
    rows = []
    for i in tqdm(range(num), desc="toy-birds", unit="img"):
        file_name = f"{i:05d}.png"
        pixels = dataset.image(i).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(out / file_name)
        rows.append({"file_name": file_name, "text": dataset.caption(i), **dataset.attributes(i)})
    temporary = out / "metadata.jsonl.tmp"
    temporary.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(temporary, out / "metadata.jsonl")


def main(argv=None) -> None:
    parser = _Parser(prog="python -m diffusion.data.toybirds", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the PNGs and metadata.jsonl")
    parser.add_argument("--num", type=int, default=64, help="number of images")
    parser.add_argument("--resolution", type=int, default=32, help="side in pixels, at least 16")
    parser.add_argument("--split", default="train", choices=SPLITS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    try:  # bad values (resolution < 16, num < 1, seed < 0) are refused by ToyBirds itself
        args = parser.parse_args(argv)
        write_images(args.out, args.num, args.resolution, args.split, args.seed, args.overwrite)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
