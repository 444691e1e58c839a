"""CUB-200-2011 birds on a generated miniature of the published layout."""

import warnings
from pathlib import Path

import pytest
import torch

from diffusion.data import birds, images
from diffusion.data.birds import CUBBirds
from diffusion.errors import UserError

try:
    from tests.data.fixtures import make_cub
except ImportError:  # pytest run without the repository root on sys.path
    from fixtures import make_cub

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"


def red_fraction(image: torch.Tensor) -> float:
    """Share of pixels that are the fixture's red bird rather than its blue background."""
    return ((image[0] > 0) & (image[2] < 0)).float().mean().item()


@pytest.fixture
def cub(tmp_path):
    return make_cub(tmp_path)


def test_items_follow_the_dataset_contract(cub):
    data = CUBBirds(cub["root"], split="train", resolution=32)
    train_records = [r for r in cub["images"] if r["is_train"]]
    assert len(data) == len(train_records) == 6
    assert data.resolution == 32 and data.num_classes == 3
    assert data.class_names == ["black footed albatross", "laysan albatross", "sooty albatross"]
    for index, record in enumerate(train_records):
        item = data[index]
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert -1 <= item["image"].min() and item["image"].max() <= 1
        assert item["text"] in record["captions"]
        assert item["label"] == record["class_id"] - 1
    assert sorted(data.all_captions()) == sorted(c for r in train_records for c in r["captions"])


def test_a_caption_is_drawn_at_random_on_each_access(cub):
    data = CUBBirds(cub["root"], resolution=16)
    torch.manual_seed(0)
    drawn = {data[0]["text"] for _ in range(40)}
    assert len(drawn) > 3 and drawn <= set(cub["images"][0]["captions"])


def test_captions_beside_the_root_are_found(tmp_path):
    cub = make_cub(tmp_path, captions="beside")
    data = CUBBirds(cub["root"], split="val", resolution=16)
    assert data[0]["text"] in [r for r in cub["images"] if not r["is_train"]][0]["captions"]


def test_crop_is_dominated_by_the_bird(cub):
    tight = CUBBirds(cub["root"], resolution=32, bbox_scale=1.0, random_flip=False)
    loose = CUBBirds(cub["root"], resolution=32, bbox_scale=1.5, random_flip=False)
    whole = CUBBirds(cub["root"], resolution=32, crop=False, random_flip=False)
    for index in range(len(tight)):
        fractions = [red_fraction(d[index]["image"]) for d in (tight, loose, whole)]
        assert fractions[0] > 0.6, fractions
        assert fractions[0] > fractions[1] > fractions[2], fractions


def test_official_split(cub):
    train = CUBBirds(cub["root"], split="train", resolution=16)
    val = CUBBirds(cub["root"], split="val", resolution=16)
    assert set(train.files) == {r["file"] for r in cub["images"] if r["is_train"]}
    assert set(val.files) == {r["file"] for r in cub["images"] if not r["is_train"]}
    assert CUBBirds(cub["root"], split="test", resolution=16).files == val.files


def test_text_to_image_split_holds_out_whole_classes(cub):
    assert 1 in birds.HELD_OUT_CLASS_IDS and len(set(birds.HELD_OUT_CLASS_IDS)) == 50
    train = CUBBirds(cub["root"], split="train", split_scheme="text_to_image", resolution=16)
    val = CUBBirds(cub["root"], split="val", split_scheme="text_to_image", resolution=16)
    assert len(train) == 8 and len(val) == 4  # class 001 (the albatross) is held out
    assert {train[i]["label"] for i in range(len(train))} == {1, 2}
    assert {val[i]["label"] for i in range(len(val))} == {0}


def test_reeds_testclasses_file_beside_the_captions_wins(tmp_path):
    cub = make_cub(tmp_path, captions="beside")
    (tmp_path / "testclasses.txt").write_text("003.Sooty_Albatross\n")
    val = CUBBirds(cub["root"], split="val", split_scheme="text_to_image", resolution=16)
    assert all(name.startswith("003.") for name in val.files) and len(val) == 4


def test_missing_captions_fall_back_to_class_names_with_a_warning(tmp_path):
    cub = make_cub(tmp_path, captions=None)
    with pytest.warns(UserWarning, match="text_c10"):
        data = CUBBirds(cub["root"], resolution=16)
    assert data[0]["text"] in list(data.all_captions())
    assert "a photo of a black footed albatross, a type of bird" in set(data.all_captions())
    assert all("albatross" in caption for caption in data.all_captions())


def test_class_labels_off(cub):
    data = CUBBirds(cub["root"], resolution=16, class_labels=False)
    assert data[0]["label"] == -1 and data.num_classes is None


def test_missing_root_names_the_path_and_the_download_command(tmp_path):
    root = tmp_path / "nowhere" / "CUB_200_2011"
    with pytest.raises(UserError) as error:
        CUBBirds(root)
    message = str(error.value)
    assert str(root) in message and "python -m diffusion.data.download birds" in message
    assert "\n" not in message


def test_bad_options_are_user_errors(cub):
    with pytest.raises(UserError, match="split_scheme"):
        CUBBirds(cub["root"], split_scheme="random")
    with pytest.raises(UserError, match="split"):
        CUBBirds(cub["root"], split="holdout")
    with pytest.raises(UserError, match="caption_dir"):
        CUBBirds(cub["root"], caption_dir=cub["root"] / "missing")


def test_cache_is_hit_the_second_time_and_keyed_by_resolution(cub, tmp_path, monkeypatch):
    calls = []
    decode = images.decode_image
    monkeypatch.setattr(images, "decode_image", lambda *a, **k: calls.append(a[0]) or decode(*a, **k))
    cache_dir = tmp_path / "cache"
    first = CUBBirds(cub["root"], resolution=16, cache=True, cache_dir=cache_dir, random_flip=False)
    assert len(calls) == len(first)
    second = CUBBirds(cub["root"], resolution=16, cache=True, cache_dir=cache_dir, random_flip=False)
    items = [second[i] for i in range(len(second))]
    assert len(calls) == len(first)  # nothing decoded: read from the cache
    uncached = CUBBirds(cub["root"], resolution=16, random_flip=False)
    for index, item in enumerate(items):
        assert torch.equal(item["image"], uncached[index]["image"])
    CUBBirds(cub["root"], resolution=24, cache=True, cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.pt"))) == 2


def test_the_config_builds_through_the_project_allowlist(cub):
    from omegaconf import OmegaConf

    from diffusion.config import build

    config = OmegaConf.create({"paths": {"data_dir": str(cub["root"].parent)},
                               "dataset": OmegaConf.load(CONF / "birds.yaml")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # captions are present: no fallback warning
        data = build(config.dataset, where="dataset", split="val")
    assert isinstance(data, CUBBirds) and len(data) == 6 and data.resolution == 64
