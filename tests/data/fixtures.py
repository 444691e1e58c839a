"""Small on-disk datasets made with Pillow and numpy, in the exact formats the loaders read.

Imported by the tests in this folder (not a conftest, so the builders are plain functions).
"""

import io
import json
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUND = (30, 60, 200)   # blue around the bird
BIRD = (220, 30, 30)          # red inside the bounding box
CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")
CUB_SIZES = ((120, 90), (90, 130), (160, 100), (100, 100))  # (width, height), one per image of a class


def make_cub(parent: Path, captions: str | None = "inside", images_per_class: int = 4) -> dict:
    """A 3-class CUB_200_2011 folder under `parent`, with a red rectangle exactly in each bbox.

    captions: "inside" (CUB_200_2011/text_c10), "beside" (parent/text_c10) or None.
    Returns {"root": Path, "images": [{"id", "file", "class_id", "is_train", "bbox", "captions"}]}.
    Even-numbered images of a class are official-train, odd ones official-test.
    """
    root = Path(parent) / "CUB_200_2011"
    (root / "images").mkdir(parents=True)
    caption_root = {"inside": root / "text_c10", "beside": Path(parent) / "text_c10", None: None}[captions]
    records = []
    for class_id, class_dir in enumerate(CUB_CLASSES, start=1):
        (root / "images" / class_dir).mkdir()
        for k in range(images_per_class):
            image_id = len(records) + 1
            width, height = CUB_SIZES[k % len(CUB_SIZES)]
            bbox = (int(width * 0.1) + 4 * k, int(height * 0.15), int(width * 0.35), int(height * 0.4))
            stem = f"{class_dir.split('.')[1]}_{k:04d}_{image_id}"
            file = f"{class_dir}/{stem}.jpg"
            image = Image.new("RGB", (width, height), BACKGROUND)
            x, y, w, h = bbox
            image.paste(BIRD, (x, y, x + w, y + h))
            image.save(root / "images" / file, quality=95)
            lines = [f"{stem} caption number {j}" for j in range(10)]
            if caption_root is not None:
                (caption_root / class_dir).mkdir(parents=True, exist_ok=True)
                (caption_root / class_dir / f"{stem}.txt").write_text("\n".join(lines) + "\n")
            records.append({"id": image_id, "file": file, "class_id": class_id,
                            "is_train": k % 2 == 0, "bbox": bbox, "captions": lines})
    write = lambda name, rows: (root / name).write_text("".join(f"{r}\n" for r in rows))
    write("images.txt", [f"{r['id']} {r['file']}" for r in records])
    write("classes.txt", [f"{i} {c}" for i, c in enumerate(CUB_CLASSES, start=1)])
    write("image_class_labels.txt", [f"{r['id']} {r['class_id']}" for r in records])
    write("train_test_split.txt", [f"{r['id']} {int(r['is_train'])}" for r in records])
    write("bounding_boxes.txt", [f"{r['id']} " + " ".join(f"{v:.1f}" for v in r["bbox"]) for r in records])
    return {"root": root, "images": records}


def noise_jpeg_bytes(size=(64, 64), seed=0) -> bytes:
    """A JPEG of random pixels, big enough that cutting it in half damages the image data."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def bomb_png_bytes(width=30000, height=30000) -> bytes:
    """A valid PNG header claiming width x height gray pixels (~900 M), with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def make_image_folder(root: Path) -> dict:
    """A folder with every awkward kind of good image and four bad files.

    Returns {"good": [relative names], "bad": [relative names]}.
    """
    root = Path(root)
    (root / "cats").mkdir(parents=True)
    Image.new("RGB", (64, 48), (255, 0, 0)).save(root / "rgb.jpg", quality=95)
    Image.new("L", (40, 40), 128).save(root / "gray.png")
    gradient = np.tile(np.linspace(0, 65535, 64), (64, 1)).astype(np.uint16)
    Image.fromarray(gradient).save(root / "sixteen.png")  # mode I;16
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)  # pure red
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (0, 0, 10, 10))                    # green corner, transparent elsewhere
    palette.save(root / "palette_alpha.png", transparency=0)
    rgba = Image.new("RGBA", (40, 40), (0, 0, 255, 0))   # fully transparent blue -> white
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 40))        # opaque left half
    rgba.save(root / "rgba.png")
    Image.new("RGB", (8, 8), (0, 200, 0)).save(root / "tiny.png")
    Image.new("RGB", (50, 50), (90, 90, 90)).save(root / "cats" / "tabby_cat.jpg")
    Image.new("RGB", (50, 50), (10, 10, 10)).save(root / "cats" / "described.png")
    (root / "cats" / "described.txt").write_text("a dark cat\nan almost black square\n")
    (root / "metadata.jsonl").write_text(
        json.dumps({"file_name": "rgb.jpg", "text": "a red rectangle"}) + "\n"
        + json.dumps({"file_name": "gray.png", "caption": "a gray square"}) + "\n")

    data = noise_jpeg_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("this is not an image\n")
    (root / "bomb.png").write_bytes(bomb_png_bytes())
    (root / "notes.md").write_text("not an image extension: ignored, not reported\n")
    good = ["cats/described.png", "cats/tabby_cat.jpg", "cmyk.jpg", "gray.png", "palette_alpha.png",
            "rgb.jpg", "rgba.png", "sixteen.png", "tiny.png"]
    bad = ["bomb.png", "empty.png", "text.png", "truncated.jpg"]
    return {"good": good, "bad": bad}


def make_mnist(root: Path, folder: str = "MNIST", train_count: int = 6, test_count: int = 4) -> dict:
    """Raw idx ubyte files in <root>/<folder>/raw/ as torchvision's MNIST reads them.

    Image i of a split is a 28x28 frame filled with 10 + 20 * label, label = i % 10.
    """
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, count in (("train", train_count), ("t10k", test_count)):
        labels = np.arange(count, dtype=np.uint8) % 10
        pixels = np.broadcast_to((10 + 20 * labels)[:, None, None], (count, 28, 28)).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x0803, count, 28, 28) + pixels.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, count) + labels.tobytes())
        arrays[prefix] = (pixels, labels)
    return arrays


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar10(root: Path, per_batch: int = 2) -> dict:
    """The python pickle batches of <root>/cifar-10-batches-py/ (5 train batches, test, meta).

    torchvision checks the published MD5 of every batch; tests patch those checksums to None.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as file:
            pickle.dump({"data": data, "labels": labels}, file)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": CIFAR_NAMES}, file)
    return batches


def make_tar(path: Path, files: dict | None = None, links: list | None = None, mode: str = "w:gz") -> Path:
    """A tar archive with regular `files` {name: bytes} and `links` [(name, target, tarfile type)]."""
    with tarfile.open(path, mode) as tar:
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target, kind in links or []:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tar.addfile(info)
    return Path(path)
