"""toy-birds: determinism, shapes, captions that name every attribute, weights, the CLI."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.data.toybirds import (
    ATTRIBUTES, COLOURS, SPECIES, UNLIMITED_LENGTH, ToyBirds, main, parse_prompt, random_prompt,
    render, vocabulary_captions,
)
from diffusion.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def mentioned(attributes: dict, caption: str) -> dict:
    """What a caption must name: everything, except the species when it says just "bird"."""
    if " bird" in caption and not any(name in caption for name in SPECIES):
        return {k: v for k, v in attributes.items() if k != "species"}
    return attributes


def test_same_index_gives_the_same_pixels_and_others_differ():
    first, again = ToyBirds(cache=False), ToyBirds(cache=False)
    assert torch.equal(first.image(7), again.image(7))
    assert first.caption(7) == again.caption(7) and first.attributes(7) == again.attributes(7)
    assert not torch.equal(first.image(7), first.image(8))
    other_split = ToyBirds(split="val", cache=False)
    assert not torch.equal(first.image(7), other_split.image(7))
    assert not torch.equal(first.image(7), ToyBirds(seed=1, cache=False).image(7))


def test_same_attributes_still_differ_by_jitter():
    attributes = ToyBirds().attributes(0)
    assert not np.array_equal(render(attributes, 32, 0), render(attributes, 32, 1))
    assert np.array_equal(render(attributes, 32, 5), render(attributes, 32, 5))
    as_indices = {k: ATTRIBUTES[k].index(v) for k, v in attributes.items()}
    assert np.array_equal(render(as_indices, 32, 5), render(attributes, 32, 5))


@pytest.mark.parametrize("resolution", [16, 23, 32, 48, 64, 100])
def test_any_resolution_from_16_gives_a_valid_image(resolution):
    dataset = ToyBirds(resolution=resolution)
    item = dataset[3]
    assert item["image"].shape == (3, resolution, resolution)
    assert item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() < item["image"].max() <= 1.0
    # The scene, caption and attributes do not depend on the resolution.
    assert item["text"] == ToyBirds(resolution=32)[3]["text"]


def test_resolution_below_16_is_refused():
    with pytest.raises(UserError):
        ToyBirds(resolution=8)
    with pytest.raises(ValueError):
        render(ToyBirds().attributes(0), 12, 0)


def test_item_follows_the_dataset_contract():
    dataset = ToyBirds(num_images=10)
    item = dataset[0]
    assert set(item) == {"image", "text", "label", "attributes"}
    assert item["label"] == -1 and isinstance(item["text"], str)
    assert dataset.resolution == 32 and dataset.num_classes is None and dataset.class_names is None
    assert len(dataset) == 10 and len(ToyBirds()) == UNLIMITED_LENGTH
    with pytest.raises(IndexError):
        dataset[10]
    assert torch.equal(dataset[-1]["image"], dataset[9]["image"])
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["text"]) == 4
    assert set(batch["attributes"]) == set(ATTRIBUTES)
    assert batch["attributes"]["body_colour"].shape == (4,)
    names = [ATTRIBUTES["body_colour"][int(i)] for i in batch["attributes"]["body_colour"]]
    assert names == [dataset.attributes(i)["body_colour"] for i in range(4)]


def test_finite_set_caches_its_renders():
    dataset = ToyBirds(num_images=5)
    first = dataset.image(2)
    assert dataset._rendered[2] and torch.equal(first, ToyBirds(num_images=5, cache=False).image(2))


def test_every_caption_names_every_attribute():
    dataset = ToyBirds()
    plain = 0
    for i in range(1500):
        caption, attributes = dataset.caption(i), dataset.attributes(i)
        assert caption == caption.lower()
        expected = mentioned(attributes, caption)
        plain += len(expected) < len(attributes)
        assert parse_prompt(caption) == expected, caption
    assert 0.2 < plain / 1500 < 0.4  # the species is sometimes just "bird"


def test_vocabulary_captions_hold_every_word_the_generator_writes():
    def words(captions):
        return {w for c in captions for w in c.replace(",", " ").split()}

    vocabulary = words(vocabulary_captions())
    dataset = ToyBirds(seed=3)
    assert words(dataset.caption(i) for i in range(3000)) <= vocabulary
    assert {"bird", *SPECIES, *COLOURS, "left", "right"} <= vocabulary
    assert ToyBirds(num_images=4).all_captions() == [ToyBirds(num_images=4).caption(i) for i in range(4)]


def test_parse_prompt_reads_short_and_long_prompts():
    assert parse_prompt("a red bird") == {"body_colour": "red"}
    assert parse_prompt("a blue owl with yellow wings flying at night") == {
        "species": "owl", "body_colour": "blue", "wing_colour": "yellow", "pose": "flying",
        "background": "night"}
    assert parse_prompt("its wings are green, a tiny duck on water facing right") == {
        "wing_colour": "green", "size": "small", "species": "duck", "pose": "on water", "facing": "right"}
    assert parse_prompt("a photo") == {}


def test_random_prompt_mentions_only_true_attributes():
    for seed in range(50):
        text, said = random_prompt(seed)
        assert said == parse_prompt(text) and len(said) >= 6


def test_attribute_weights_skew_the_draws():
    dataset = ToyBirds(attribute_weights={"body_colour": {"red": 0.7}, "species": [0, 0, 1, 1]})
    draws = [dataset.attributes(i) for i in range(4000)]
    colours = Counter(d["body_colour"] for d in draws)
    assert 0.66 < colours["red"] / 4000 < 0.74
    assert all(0.02 < colours[c] / 4000 < 0.07 for c in COLOURS if c != "red")  # 0.3 / 7 each
    assert {d["species"] for d in draws} == {"owl", "heron"}
    uniform = Counter(ToyBirds().attributes(i)["body_colour"] for i in range(4000))
    assert max(uniform.values()) / 4000 < 0.16


@pytest.mark.parametrize("weights", [
    {"colour": {"red": 1.0}}, {"body_colour": {"pink": 0.5}}, {"body_colour": {"red": 1.5}},
    {"species": [1, 2]}, {"species": [0, 0, 0, 0]}, {"size": "big"}, {"size": {"small": "lots"}},
])
def test_bad_attribute_weights_are_user_errors(weights):
    with pytest.raises(UserError):
        ToyBirds(attribute_weights=weights)


def test_cli_writes_pngs_and_matching_metadata(tmp_path):
    out = tmp_path / "birds"
    main(["--out", str(out), "--num", "6", "--resolution", "24", "--split", "val", "--seed", "2"])
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    dataset = ToyBirds(split="val", resolution=24, seed=2)
    assert [row["file_name"] for row in rows] == [f"{i:05d}.png" for i in range(6)]
    for i, row in enumerate(rows):
        pixels = np.asarray(Image.open(out / row["file_name"]))
        assert np.array_equal(pixels, dataset.image(i).permute(1, 2, 0).numpy())
        assert row["text"] == dataset.caption(i)
        assert {k: row[k] for k in ATTRIBUTES} == dataset.attributes(i)
    main(["--out", str(out), "--num", "2", "--overwrite"])  # fewer images: stale ones go
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "metadata.jsonl"]


@pytest.mark.parametrize("arguments", [
    ["--resolution", "8"], ["--num", "0"], ["--resolution", "abc"], ["--split", "dev"], ["--seed", "-1"],
])
def test_cli_bad_arguments_exit_with_one_line(tmp_path, capsys, arguments):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "x"), *arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error


def test_cli_refuses_a_non_empty_directory_without_traceback(tmp_path):
    (tmp_path / "metadata.jsonl").write_text("{}\n")
    result = subprocess.run(
        [sys.executable, "-m", "diffusion.data.toybirds", "--out", str(tmp_path), "--num", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--overwrite" in result.stderr
    assert "Traceback" not in result.stderr
