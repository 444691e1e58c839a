"""A folder of images with awkward good files, bad files, captions and splits."""

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffusion.data import images
from diffusion.data.imagefolder import ImageFolder
from diffusion.errors import UserError

try:
    from tests.data.fixtures import make_image_folder, noise_jpeg_bytes
except ImportError:  # pytest run without the repository root on sys.path
    from fixtures import make_image_folder, noise_jpeg_bytes

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"


def build(root, **options):
    """Construct, returning (dataset, [warning messages])."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = ImageFolder(root, **{"resolution": 16, "val_fraction": 0.0, "random_flip": False, **options})
    return data, [str(w.message) for w in caught]


@pytest.fixture
def folder(tmp_path):
    spec = make_image_folder(tmp_path / "pictures")
    return tmp_path / "pictures", spec


def by_name(data, name):
    return data[data.files.index(name)]


def test_every_good_image_loads_and_bad_ones_are_reported_once(folder):
    root, spec = folder
    data, messages = build(root)
    assert data.files == spec["good"]
    assert len(messages) == 1
    assert "skipped 4 of 13 files" in messages[0]
    assert all(name in messages[0] for name in spec["bad"])
    for index in range(len(data)):
        item = data[index]
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
        assert -1 <= item["image"].min() and item["image"].max() <= 1
        assert isinstance(item["text"], str) and item["label"] == -1
    assert data.resolution == 16 and data.num_classes is None and data.class_names is None


def test_strict_stops_on_a_bad_file(folder):
    root, _ = folder
    with pytest.raises(UserError, match="strict=false"):
        ImageFolder(root, strict=True, val_fraction=0.0)


def test_colour_conversions(folder):
    root, _ = folder
    data, _ = build(root)
    mean = lambda name: by_name(data, name)["image"].mean(dim=(1, 2))
    assert torch.allclose(mean("cmyk.jpg"), torch.tensor([1.0, -1.0, -1.0]), atol=0.05)
    assert torch.allclose(mean("sixteen.png"), torch.zeros(3), atol=0.05)  # full ramp, not clipped
    sixteen = by_name(data, "sixteen.png")["image"]
    assert sixteen[0, 8, 0] < -0.8 and sixteen[0, 8, -1] > 0.8
    palette = by_name(data, "palette_alpha.png")["image"]
    assert palette[:, -1, -1].tolist() == [1.0, 1.0, 1.0]  # transparent -> white
    assert palette[0, 0, 0] < -0.9 and palette[1, 0, 0] > 0.9  # opaque green corner
    rgba = by_name(data, "rgba.png")["image"]
    assert rgba[:, 8, 0].tolist() == [-1.0, -1.0, 1.0] and rgba[:, 8, -1].tolist() == [1.0, 1.0, 1.0]
    tiny = by_name(data, "tiny.png")["image"]  # 8x8 upscaled to 16x16
    assert torch.allclose(tiny.mean(dim=(1, 2)), torch.tensor([-1.0, 200 / 127.5 - 1, -1.0]), atol=0.02)


def test_captions_from_metadata_sidecars_and_folders(folder):
    root, _ = folder
    data, _ = build(root)
    assert by_name(data, "rgb.jpg")["text"] == "a red rectangle"           # metadata "text"
    assert by_name(data, "gray.png")["text"] == "a gray square"            # metadata "caption"
    assert by_name(data, "cats/described.png")["text"] in ("a dark cat", "an almost black square")
    assert by_name(data, "cats/tabby_cat.jpg")["text"] == "cats"           # folder name
    assert by_name(data, "tiny.png")["text"] == ""                         # top level: no caption
    captions = list(data.all_captions())
    assert len(captions) == len(data) + 1 and "an almost black square" in captions


def test_split_folders_are_used(tmp_path):
    for split, count in (("train", 3), ("val", 2)):
        (tmp_path / split / "dogs").mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(tmp_path / split / "dogs" / f"{i}.png")
    train, _ = build(tmp_path, split="train")
    val, _ = build(tmp_path, split="val")
    assert len(train) == 3 and len(val) == 2
    assert all(name.startswith("val/") for name in val.files) and val[0]["text"] == "dogs"


def test_hash_split_is_disjoint_stable_and_never_empty(tmp_path):
    for i in range(40):
        Image.new("RGB", (12, 12), (i, i, i)).save(tmp_path / f"{i:02d}.png")
    train, _ = build(tmp_path, split="train", val_fraction=0.25)
    val, _ = build(tmp_path, split="val", val_fraction=0.25)
    assert not set(train.files) & set(val.files) and len(train) + len(val) == 40
    assert 3 <= len(val) <= 20
    assert build(tmp_path, split="val", val_fraction=0.25)[0].files == val.files
    tiny_val, _ = build(tmp_path, split="val", val_fraction=0.001)
    assert len(tiny_val) == 1  # nothing hashed below the fraction: the lowest hash is val
    everything, _ = build(tmp_path, split="val", val_fraction=0.0)
    assert len(everything) == 40


def test_min_size_skips_small_images_with_one_warning(folder):
    root, spec = folder
    data, messages = build(root, min_size=20)
    assert "tiny.png" not in data.files and len(data) == len(spec["good"]) - 1
    assert len(messages) == 2 and "min_size=20" in messages[1] and "tiny.png" in messages[1]


def test_missing_empty_and_unset_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ImageFolder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="no image files"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(UserError, match="dataset.path"):
        ImageFolder(None)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.jpg").write_bytes(noise_jpeg_bytes()[:100])
    with pytest.raises(UserError, match="no usable images"):
        build(tmp_path / "broken")
    (tmp_path / "badjson").mkdir()
    Image.new("RGB", (12, 12)).save(tmp_path / "badjson" / "a.png")
    (tmp_path / "badjson" / "metadata.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="metadata.jsonl:1"):
        ImageFolder(tmp_path / "badjson", val_fraction=0.0)


def test_cache_is_hit_the_second_time_and_keyed_by_resolution(folder, tmp_path, monkeypatch):
    root, spec = folder
    decoded, inspected = [], []
    decode, inspect = images.decode_image, images.inspect_image
    monkeypatch.setattr(images, "decode_image", lambda *a, **k: decoded.append(a[0]) or decode(*a, **k))
    monkeypatch.setattr(images, "inspect_image", lambda *a, **k: inspected.append(a[0]) or inspect(*a, **k))
    cache_dir = tmp_path / "cache"
    first, messages = build(root, cache=True, cache_dir=cache_dir)
    assert len(decoded) == len(spec["good"]) and len(messages) == 1
    decoded.clear(), inspected.clear()
    second, messages = build(root, cache=True, cache_dir=cache_dir)
    items = [second[i] for i in range(len(second))]
    assert decoded == [] and inspected == []  # neither scanned nor decoded again
    assert len(messages) == 1 and "skipped 4" in messages[0]  # the same report from the cache
    assert second.files == first.files and items[0]["text"] == first[0]["text"]
    for index, item in enumerate(items):
        assert torch.equal(item["image"], first[index]["image"])
    build(root, cache=True, cache_dir=cache_dir, resolution=24)
    assert len(list(cache_dir.glob("*.pt"))) == 2
    with pytest.raises(UserError):
        build(root, cache=True, cache_dir=cache_dir, strict=True)


def test_default_cache_folder_is_hidden_from_the_scan(folder):
    root, spec = folder
    build(root, cache=True)
    assert list((root / ".cache").glob("*.pt"))
    data, _ = build(root, cache=True)
    assert data.files == spec["good"]


def test_the_config_builds_through_the_project_allowlist(folder):
    from omegaconf import OmegaConf

    from diffusion.config import build

    root, spec = folder
    config = OmegaConf.create({"paths": {"data_dir": "data"}, "dataset": OmegaConf.load(CONF / "imagefolder.yaml")})
    config.dataset.path = str(root)
    config.dataset.val_fraction = 0.0
    with pytest.warns(UserWarning, match="skipped 4"):
        data = build(config.dataset, where="dataset", split="train")
    assert isinstance(data, ImageFolder) and data.files == spec["good"] and data.resolution == 64
    config.dataset.path = None
    with pytest.raises(UserError, match="dataset.path"):
        build(config.dataset, where="dataset", split="train")
