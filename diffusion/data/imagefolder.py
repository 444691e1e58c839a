"""Any folder of captioned images: ``python train.py dataset=imagefolder dataset.path=<folder>``.

The rules, in the order they apply:

- Files: every ``.jpg .jpeg .png .webp .bmp .gif .tif .tiff`` below the folder (recursive, case
  does not matter); hidden files and folders (``.cache`` among them) are ignored.
- Splits: when the folder has ``train/`` and one of ``val/``, ``validation/``, ``test/``, those
  are the splits. Otherwise each file goes to val when a hash of its relative path falls below
  ``val_fraction`` (stable across runs and machines, and adding files never moves old ones); if
  that picks nothing, the one file with the lowest hash is val. ``val_fraction=0`` keeps no
  held-out images: val then reuses the training images.
- Captions: from ``metadata.jsonl`` files (one JSON object a line, ``file_name`` relative to that
  jsonl's folder, caption under ``text`` or ``caption``; a list of strings is several captions),
  else from a ``.txt`` file beside the image with the same stem (one caption a line), else the
  name of the image's folder with ``_``/``-`` as spaces ("golden_retriever/1.jpg" -> "golden
  retriever"), and the empty string for images at the top of the split (they train the
  unconditional branch of classifier-free guidance). With several captions one is drawn per access.
- Bad files: every file is fully decoded once at construction (JPEGs at 1/8 scale, in threads;
  a truncated JPEG only fails on a full decode). Unreadable, corrupt, empty and oversized
  (decompression bomb) files are skipped and reported in one warning, or stop the run with a
  `UserError` when ``strict=true``. With ``cache=true`` the scan result is stored with the cache.
- Small images: those whose shorter side is below ``min_size`` (default 0: none) are skipped and
  reported in one warning; the rest smaller than ``resolution`` are upscaled (bicubic) and counted
  in one info log line.
- Geometry and colour: the centred square (after EXIF rotation) resized to ``resolution``;
  colour rules are those of `diffusion.data.images` (transparency on white, 16-bit scaled).
"""

import hashlib
import json
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import Dataset

from diffusion.data import cache as image_cache
from diffusion.data import images
from diffusion.errors import UserError, check_choice

log = logging.getLogger(__name__)

VAL_FOLDER_NAMES = ("val", "validation", "test")


class ImageFolder(Dataset):
    """A folder tree of images: ``{"image": [3, R, R] in [-1, 1], "text": str, "label": -1}``."""

    def __init__(
        self,
        path,                          # the folder (``dataset.path=...``)
        split: str = "train",          # train | val
        resolution: int = 64,          # output side in pixels
        random_flip: bool = True,      # mirror half the time
        val_fraction: float = 0.05,    # hash-split share for val when there are no split folders
        min_size: int = 0,             # skip images whose shorter side is smaller than this
        strict: bool = False,          # stop on the first unreadable file instead of skipping it
        cache: bool = False,           # decode once, keep uint8 [N, 3, R, R] on disk
        cache_dir=None,                # None: <path>/.cache
    ):
        if path is None or str(path).strip() in ("", "???"):
            raise UserError("dataset.path is not set; run with dataset=imagefolder dataset.path=<folder>")
        self.root = Path(path).expanduser()
        if not self.root.is_dir():
            raise UserError(f"image folder {self.root} does not exist; set dataset.path to a folder of images")
        check_choice("split", split, ("train", "val"))
        if not 0.0 <= float(val_fraction) < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if int(resolution) < 8:
            raise UserError(f"resolution must be at least 8 pixels, got {resolution}")
        self.split = split
        self.resolution = int(resolution)
        self.random_flip = bool(random_flip)
        self.min_size = int(min_size)
        self.num_classes = None
        self.class_names = None

        self.split_root, candidates = self._split_files(split, float(val_fraction))
        if not candidates:
            raise UserError(f"no image files ({' '.join(images.IMAGE_EXTENSIONS)}) in the {split} "
                            f"split of {self.split_root}")
        cache_dir = Path(cache_dir).expanduser() if cache_dir else self.root / ".cache"
        if cache:
            contents = self._cached(candidates, cache_dir, strict)
            self.files, self.images = contents["files"], contents["images"]
            bad, small, upscaled = contents["bad"], contents["small"], contents["upscaled"]
        else:
            self.files, bad, small, upscaled = self._scan(candidates, strict)
            self.images = None
        self._report(len(candidates), bad, small, upscaled)
        self.paths = [self.root / name for name in self.files]
        self.captions = self._captions()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index] if self.images is not None else self._decode(index)
        image = images.maybe_flip(image, self.random_flip)
        captions = self.captions[index]
        text = captions[int(torch.randint(len(captions), ()))] if len(captions) > 1 else captions[0]
        return {"image": images.uint8_to_model(image), "text": text, "label": -1}

    def all_captions(self):
        for captions in self.captions:
            yield from captions

    # --- construction steps -------------------------------------------------------------------

    def _split_files(self, split: str, val_fraction: float) -> tuple[Path, list[str]]:
        """(folder the split lives in, file names relative to the root, sorted)."""
        val_dir = next((self.root / n for n in VAL_FOLDER_NAMES if (self.root / n).is_dir()), None)
        if (self.root / "train").is_dir() and val_dir is not None:
            split_root = self.root / "train" if split == "train" else val_dir
            return split_root, list_image_files(split_root, self.root)
        names = list_image_files(self.root, self.root)
        if val_fraction == 0 or not names:
            return self.root, names  # no held-out images: both splits see everything
        score = {name: _hash_fraction(name) for name in names}
        val = [name for name in names if score[name] < val_fraction] or [min(names, key=score.get)]
        if split == "val":
            return self.root, val
        held_out = set(val)
        return self.root, [name for name in names if name not in held_out] or names

    def _scan(self, candidates: list[str], strict: bool):
        """Decode every candidate once: (kept names, [[name, reason]] bad, small names, upscaled)."""
        results = scan_images([self.root / name for name in candidates])
        kept, bad, small, upscaled = [], [], [], 0
        for name, result in zip(candidates, results):
            if isinstance(result, str):
                bad.append([name, result])
            elif min(result) < self.min_size:
                small.append(name)
            else:
                kept.append(name)
                upscaled += min(result) < self.resolution
        if bad and strict:
            name, reason = bad[0]
            raise UserError(f"{len(bad)} unreadable image file(s) in {self.split_root}, e.g. {name} "
                            f"({reason}); remove them or set dataset.strict=false to skip them")
        if not kept:
            raise UserError(f"no usable images among {len(candidates)} files in {self.split_root} "
                            f"({len(bad)} unreadable, {len(small)} smaller than min_size={self.min_size})")
        return kept, bad, small, upscaled

    def _cached(self, candidates: list[str], cache_dir: Path, strict: bool) -> dict:
        key = {
            "dataset": "imagefolder",
            "files": image_cache.file_fingerprint([self.root / n for n in candidates], self.root),
            "resolution": self.resolution,
            "min_size": self.min_size,
            "crop": "center",
        }

        def build() -> dict:
            kept, bad, small, upscaled = self._scan(candidates, strict)
            self.files = kept
            self.paths = [self.root / name for name in kept]
            stacked = image_cache.stack_images(self._decode, len(kept), f"decoding {self.root.name}")
            return {"images": stacked, "files": kept, "bad": bad, "small": small, "upscaled": upscaled}

        contents = image_cache.cached(cache_dir, f"imagefolder-{self.split}-{self.resolution}", key, build)
        if contents["bad"] and strict:  # a cache built with strict=false still obeys strict=true
            name, reason = contents["bad"][0]
            raise UserError(f"{len(contents['bad'])} unreadable image file(s) in {self.split_root}, "
                            f"e.g. {name} ({reason}); remove them or set dataset.strict=false")
        return contents

    def _report(self, total: int, bad: list, small: list, upscaled: int) -> None:
        if bad:
            shown = ", ".join(f"{name} ({reason})" for name, reason in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            warnings.warn(f"skipped {len(bad)} of {total} files in {self.split_root} that are not "
                          f"readable images: {shown}{more}; set dataset.strict=true to stop on them "
                          "instead", stacklevel=3)
        if small:
            more = f" and {len(small) - 5} more" if len(small) > 5 else ""
            warnings.warn(f"skipped {len(small)} of {total} images in {self.split_root} smaller than "
                          f"min_size={self.min_size}: {', '.join(small[:5])}{more}", stacklevel=3)
        if upscaled:
            log.info("%d of %d images in %s are smaller than %d pixels and are upscaled (bicubic)",
                     upscaled, len(self.files), self.split_root, self.resolution)

    def _captions(self) -> list[list[str]]:
        from_metadata = read_metadata_captions(self.root)
        captions = []
        for name, path in zip(self.files, self.paths):
            lines = from_metadata.get(name)
            if not lines:
                lines = _sidecar_captions(path)
            if not lines:
                folder = path.parent.relative_to(self.split_root)
                lines = [folder.name.replace("_", " ").replace("-", " ") if folder.parts else ""]
            captions.append(lines)
        return captions

    def _decode(self, index: int) -> torch.Tensor:
        try:
            return images.decode_image(self.paths[index], self.resolution)
        except (images.BadImageError, FileNotFoundError) as error:
            raise UserError(f"cannot read {self.paths[index]} ({error}); it changed after the "
                            "dataset was scanned, so build the dataset again") from None


def list_image_files(folder: Path, relative_to: Path) -> list[str]:
    """Image files below `folder` as sorted POSIX paths relative to `relative_to`; hidden ones skipped."""
    names = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for file in files:
            if not file.startswith(".") and file.lower().endswith(images.IMAGE_EXTENSIONS):
                names.append(Path(directory, file).relative_to(relative_to).as_posix())
    return sorted(names)


def scan_images(paths: list[Path]) -> list:
    """(width, height) for each readable file, or a short reason string for each bad one."""
    def inspect(path: Path):
        try:
            if path.stat().st_size == 0:
                return "empty file"
            return images.inspect_image(path)
        except images.BadImageError as error:
            return str(error)
        except OSError as error:
            return type(error).__name__

    # Pillow releases the GIL inside its decoders, so threads can overlap files on a many-core
    # machine (on the 1-CPU-throughput development machine they cost nothing and gained nothing)
    workers = min(8, os.cpu_count() or 1)
    with images.refuse_decompression_bombs(), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(inspect, paths))


def read_metadata_captions(root: Path) -> dict[str, list[str]]:
    """{file name relative to root: captions} from every metadata.jsonl below root."""
    captions = {}
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        if "metadata.jsonl" not in files:
            continue
        jsonl = Path(directory, "metadata.jsonl")
        for line_number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{jsonl}:{line_number} is not valid JSON ({error.msg})") from None
            if not isinstance(row, dict) or "file_name" not in row:
                raise UserError(f"{jsonl}:{line_number} needs a JSON object with a 'file_name' key")
            text = row.get("text", row.get("caption"))
            lines = [text] if isinstance(text, str) else text if isinstance(text, list) else []
            target = Path(os.path.normpath(Path(directory, str(row["file_name"]))))
            if target.is_relative_to(root):  # a name pointing outside the folder is no image of ours
                name = target.relative_to(root).as_posix()
                captions[name] = [t.strip() for t in lines if isinstance(t, str) and t.strip()]
    return captions


def _sidecar_captions(path: Path) -> list[str]:
    text_file = path.with_suffix(".txt")
    if not text_file.is_file():
        return []
    text = text_file.read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _hash_fraction(name: str) -> float:
    """A stable number in [0, 1) for a relative path (same on every machine and Python run)."""
    return int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:12], 16) / 16**12
