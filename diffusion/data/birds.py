"""CUB-200-2011 birds (Wah et al. 2011) with the captions of Reed et al. 2016.

On disk, exactly as published (``python -m diffusion.data.download birds`` puts it there)::

    CUB_200_2011/
      images.txt              <image_id> <class_dir>/<file>.jpg
      classes.txt             <class_id> 001.Black_footed_Albatross
      image_class_labels.txt  <image_id> <class_id>
      train_test_split.txt    <image_id> <1 = train | 0 = test>
      bounding_boxes.txt      <image_id> <x> <y> <width> <height>      (floats, pixels)
      images/<class_dir>/<file>.jpg

Captions are the ten-per-image files of Reed et al. 2016, ``text_c10/<class_dir>/<stem>.txt``
(one caption a line), looked for in ``CUB_200_2011/text_c10``, beside it (``../text_c10``), in
``../cvpr2016_cub/text_c10`` (Reed's archive) and in ``../birds/text`` or ``../text`` (the
StackGAN/AttnGAN layout). One of an image's captions is drawn at random on every access. Without
them, captions are made from the class name ("a photo of a black footed albatross, a type of
bird"), with one warning that says where to put the files.

Splits (``split="val"`` and ``"test"`` both mean the held-out part):

- ``official``: CUB's own train_test_split.txt (5994 train / 5794 test images, all 200 classes).
- ``text_to_image``: the class split of the text-to-image literature (Reed et al. 2016, used by
  StackGAN and AttnGAN): 150 classes train, 50 classes held out, all images of a class on one
  side. Reed's ``cvpr2016_cub/testclasses.txt`` is read when it sits beside the caption folder.
  Otherwise the built-in `HELD_OUT_CLASS_IDS` is used: the 50-class test split of Akata et al.
  2015 that Reed et al. adopted, written here from public code, not checked against Reed's own
  file, so put ``testclasses.txt`` in place when the exact published split matters.
"""

import functools
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset

from diffusion.data import cache as image_cache
from diffusion.data import images
from diffusion.errors import UserError, check_choice

# class ids (as in classes.txt) held out by the `text_to_image` split when no testclasses.txt is found
HELD_OUT_CLASS_IDS = (
    1, 4, 6, 8, 9, 14, 23, 29, 31, 33, 34, 35, 36, 37, 38, 43, 49, 51, 53, 66,
    72, 79, 83, 84, 86, 91, 95, 96, 98, 101, 102, 103, 112, 114, 119, 121, 130, 135, 138, 147,
    156, 163, 165, 166, 180, 183, 185, 186, 187, 197,
)

CLASS_TEMPLATES = (
    "a photo of {article_name}, a type of bird",
    "{article_name}",
    "a photo of {article_name}",
    "a close-up photo of {article_name} bird",
    "{article_name} in the wild",
)

CAPTION_HELP = (
    "get the Reed et al. 2016 captions (the text_c10 folder of https://github.com/reedscot/cvpr2016, "
    "Google Drive archive 'cub_icml') and put text_c10/ inside or beside CUB_200_2011/"
)


def with_article(noun: str) -> str:
    """'albatross' -> 'an albatross', 'bird' -> 'a bird' (by first letter, good enough here)."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def readable_class_name(class_dir: str) -> str:
    """'001.Black_footed_Albatross' -> 'black footed albatross'."""
    return class_dir.split(".", 1)[-1].replace("_", " ").lower()


def download_hint(root: Path) -> str:
    command = "python -m diffusion.data.download birds"
    if root.parent.name != "data":
        command += f" --data-dir {root.parent}"
    return command


class CUBBirds(Dataset):
    """CUB-200-2011 birds: ``{"image": [3, R, R] in [-1, 1], "text": str, "label": int}``."""

    def __init__(
        self,
        root,                                # the CUB_200_2011 folder
        split: str = "train",                # train | val (= test)
        resolution: int = 64,                # output side in pixels
        crop: bool = True,                   # crop a square around the bounding box (else centre square)
        bbox_scale: float = 1.5,             # crop side = bbox_scale * longer bbox side (StackGAN: 1.5)
        random_flip: bool = True,            # mirror half the time; captions rarely say left/right
        split_scheme: str = "official",      # official | text_to_image (see module docstring)
        class_labels: bool = True,           # label = class index 0..199, else -1
        caption_dir=None,                    # a text_c10 folder; None searches the usual places
        cache: bool = False,                 # decode each image once, keep uint8 [N, 3, R, R] on disk
        cache_dir=None,                      # where the cache lives; None: <root>/.cache
    ):
        self.root = Path(root).expanduser()
        check_choice("split", split, ("train", "val", "test"))
        check_choice("split_scheme", split_scheme, ("official", "text_to_image"))
        if int(resolution) < 8:
            raise UserError(f"resolution must be at least 8 pixels, got {resolution}")
        if float(bbox_scale) <= 0:
            raise UserError(f"bbox_scale must be positive, got {bbox_scale}")
        self.split = "train" if split == "train" else "test"
        self.resolution = int(resolution)
        self.crop = bool(crop)
        self.bbox_scale = float(bbox_scale)
        self.random_flip = bool(random_flip)

        table = _read_tables(self.root)
        class_dirs = table["classes"]  # {class_id: "001.Black_footed_Albatross"}
        ordered_ids = sorted(class_dirs)
        class_index = {class_id: index for index, class_id in enumerate(ordered_ids)}
        self.class_names = [readable_class_name(class_dirs[c]) for c in ordered_ids]
        self.num_classes = len(ordered_ids) if class_labels else None

        found_caption_dir = _find_caption_dir(self.root, caption_dir)
        if split_scheme == "official":
            keep = [i for i in table["image_ids"] if table["is_train"][i] == (self.split == "train")]
        else:
            held_out = _held_out_class_ids(found_caption_dir, class_dirs)
            keep = [i for i in table["image_ids"]
                    if (table["class_of"][i] in held_out) == (self.split == "test")]
        if not keep:
            raise UserError(f"the {split} split of {self.root} ({split_scheme}) has no images")

        self.files = [table["files"][i] for i in keep]  # "<class_dir>/<file>.jpg"
        self.paths = [self.root / "images" / name for name in self.files]
        self.boxes = [table["boxes"][i] for i in keep] if self.crop else [None] * len(keep)
        self.labels = [class_index[table["class_of"][i]] if class_labels else -1 for i in keep]
        names = [self.class_names[class_index[table["class_of"][i]]] for i in keep]
        self.captions = _load_captions(found_caption_dir, self.files, names, self.root)

        self.images = None  # uint8 [N, 3, R, R] when cached
        if cache:
            self.images = self._load_or_build_cache(Path(cache_dir) if cache_dir else self.root / ".cache",
                                                    split_scheme)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index] if self.images is not None else self._decode(index)
        image = images.maybe_flip(image, self.random_flip)
        captions = self.captions[index]
        text = captions[int(torch.randint(len(captions), ()))]
        return {"image": images.uint8_to_model(image), "text": text, "label": self.labels[index]}

    def all_captions(self):
        for captions in self.captions:
            yield from captions

    def _decode(self, index: int) -> torch.Tensor:
        box = self.boxes[index]
        crop = functools.partial(images.square_around_box, box, self.bbox_scale) if box else None
        try:
            return images.decode_image(self.paths[index], self.resolution, crop)
        except (images.BadImageError, FileNotFoundError) as error:
            raise UserError(f"cannot read {self.paths[index]} ({error}); the CUB copy looks damaged, "
                            f"download it again with: {download_hint(self.root)}") from None

    def _load_or_build_cache(self, cache_dir: Path, split_scheme: str) -> torch.Tensor:
        key = {
            "dataset": "cub",
            "split": self.split,
            "split_scheme": split_scheme,
            "files": image_cache.file_fingerprint(self.paths, self.root),
            "resolution": self.resolution,
            "boxes": self.boxes,
            "bbox_scale": self.bbox_scale if self.crop else None,
        }
        build = lambda: {"images": image_cache.stack_images(self._decode, len(self), "decoding CUB")}
        return image_cache.cached(cache_dir, f"cub-{self.split}-{self.resolution}", key, build)["images"]


def _read_tables(root: Path) -> dict:
    """Parse the CUB index files into plain dicts keyed by image id."""
    if not (root / "images.txt").is_file():
        raise UserError(f"CUB-200-2011 not found: no images.txt in {root}; "
                        f"get it with: {download_hint(root)}")
    columns = {name: _read_columns(root / name) for name in
               ("images.txt", "classes.txt", "image_class_labels.txt",
                "train_test_split.txt", "bounding_boxes.txt")}
    try:
        image_ids = [int(row[0]) for row in columns["images.txt"]]
        table = {
            "image_ids": image_ids,
            "files": {int(row[0]): row[1] for row in columns["images.txt"]},
            "classes": {int(row[0]): row[1] for row in columns["classes.txt"]},
            "class_of": {int(row[0]): int(row[1]) for row in columns["image_class_labels.txt"]},
            "is_train": {int(row[0]): row[1] == "1" for row in columns["train_test_split.txt"]},
            "boxes": {int(row[0]): (float(row[1]), float(row[2]), float(row[3]), float(row[4]))
                      for row in columns["bounding_boxes.txt"]},
        }
    except (ValueError, IndexError) as error:
        raise UserError(f"malformed CUB index files in {root} ({error}); "
                        f"download again with: {download_hint(root)}") from None
    for name in ("class_of", "is_train", "boxes"):
        missing = [i for i in image_ids if i not in table[name]]
        if missing:
            raise UserError(f"CUB index files in {root} list no {name.replace('_', ' ')} for image "
                            f"{missing[0]}; download again with: {download_hint(root)}")
    unknown = [c for c in table["class_of"].values() if c not in table["classes"]]
    if unknown:
        raise UserError(f"image_class_labels.txt in {root} uses class {unknown[0]}, "
                        "which classes.txt does not list")
    return table


def _read_columns(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise UserError(f"CUB-200-2011 in {path.parent} is incomplete: {path.name} is missing; "
                        f"download again with: {download_hint(path.parent)}")
    rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if any(len(row) < 2 for row in rows):
        raise UserError(f"malformed line in {path}: expected '<id> <value>' on every line")
    return rows


def _find_caption_dir(root: Path, caption_dir) -> Path | None:
    if caption_dir is not None:
        caption_dir = Path(caption_dir).expanduser()
        if not caption_dir.is_dir():
            raise UserError(f"caption_dir {caption_dir} is not a folder; {CAPTION_HELP}")
        return caption_dir
    candidates = (root / "text_c10", root.parent / "text_c10", root.parent / "cvpr2016_cub" / "text_c10",
                  root.parent / "birds" / "text", root.parent / "text")
    return next((path for path in candidates if path.is_dir()), None)


def _held_out_class_ids(caption_dir: Path | None, class_dirs: dict) -> set[int]:
    """Reed's testclasses.txt when it is beside the captions, else HELD_OUT_CLASS_IDS."""
    split_file = caption_dir.parent / "testclasses.txt" if caption_dir else None
    if split_file is None or not split_file.is_file():
        return set(HELD_OUT_CLASS_IDS)
    id_of = {name: class_id for class_id, name in class_dirs.items()}
    names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    unknown = [name for name in names if name not in id_of]
    if unknown:
        raise UserError(f"{split_file} names classes not in classes.txt, e.g. {unknown[0]!r}")
    return {id_of[name] for name in names}


def _load_captions(caption_dir: Path | None, files: list[str], names: list[str], root: Path):
    """Each image's caption list: its text_c10 lines, or class-name templates when missing."""
    captions, missing = [], 0
    for file, name in zip(files, names):
        lines = []
        if caption_dir is not None:
            text_file = caption_dir / Path(file).with_suffix(".txt")
            if text_file.is_file():
                text = text_file.read_text(encoding="utf-8", errors="replace")
                lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            missing += 1
            lines = [t.format(article_name=with_article(name)) for t in CLASS_TEMPLATES]
        captions.append(lines)
    if caption_dir is None:
        warnings.warn(f"no CUB caption folder found in or beside {root}, so captions are made from "
                      f"class names; {CAPTION_HELP}", stacklevel=3)
    elif missing:
        warnings.warn(f"{missing} of {len(files)} images have no caption file in {caption_dir}; "
                      "their captions are made from class names", stacklevel=3)
    return captions
