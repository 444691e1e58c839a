"""The toy-birds probe: learns every attribute, saves and loads, scores only what was prompted."""

import pytest
import torch

from diffusion.data.toybirds import ATTRIBUTES, ToyBirds
from diffusion.errors import UserError
from diffusion.evaluation.probe import (
    evaluate, features, load_probe, predict, probe_path, read_probe, render_batch, save_probe,
    score, train_probe,
)


@pytest.fixture(scope="module")
def quick_probe():
    """A probe trained for a few seconds at 16 px: far from good, clearly better than chance."""
    # One thread: on a busy 2-core machine two threads of such small convolutions ran 3x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_probe(resolution=16, steps=200, batch_size=64, held_out_images=600, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_quick_training_beats_chance_on_every_attribute(quick_probe):
    _, accuracy = quick_probe
    assert set(accuracy) == set(ATTRIBUTES)
    for name, values in ATTRIBUTES.items():
        chance = 1 / len(values)
        assert accuracy[name] > chance + 0.1, (name, accuracy[name])


def test_save_and_load_give_the_same_predictions(quick_probe, tmp_path):
    probe, accuracy = quick_probe
    path = probe_path(16, tmp_path)
    save_probe(probe, accuracy, path)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, no leftovers
    loaded = load_probe(16, train_if_missing=False, cache_dir=tmp_path)
    assert loaded.held_out_accuracy == pytest.approx(accuracy)
    images, _ = render_batch(ToyBirds(split="val", resolution=16), range(20))
    assert predict(loaded, images) == predict(probe, images)
    assert torch.allclose(features(loaded, images), features(probe, images))


def test_missing_or_foreign_probe_is_a_user_error(quick_probe, tmp_path):
    with pytest.raises(UserError, match="no toy-birds probe"):
        load_probe(16, train_if_missing=False, cache_dir=tmp_path)
    path = probe_path(16, tmp_path)
    torch.save({"format_version": 1, "renderer_version": -1}, path)
    with pytest.raises(UserError, match="another toy-birds renderer"):
        read_probe(path)


def test_score_counts_only_prompted_attributes(quick_probe):
    probe, _ = quick_probe
    dataset = ToyBirds(split="test", resolution=16)
    images, _ = render_batch(dataset, range(40))
    predictions = predict(probe, images)
    assert len(predictions) == 40 and set(predictions[0]) == set(ATTRIBUTES)
    # Prompt the predictions themselves: a perfect score, only for what was prompted.
    prompted = [{"body_colour": p["body_colour"]} if i % 2 else {"pose": p["pose"], "size": p["size"]}
                for i, p in enumerate(predictions)]
    assert score(probe, images, prompted) == {"body_colour": 1.0, "pose": 1.0, "size": 1.0}
    wrong = [{"facing": "left" if p["facing"] == "right" else "right"} for p in predictions]
    assert score(probe, images, wrong) == {"facing": 0.0}


def test_probe_reads_images_of_another_resolution(quick_probe):
    probe, _ = quick_probe
    images, _ = render_batch(ToyBirds(split="test", resolution=32), range(8))
    assert len(predict(probe, images)) == 8
    assert features(probe, images).shape == (8, probe.feature_dim)


@pytest.mark.slow
def test_default_probe_reaches_98_percent_on_every_attribute():
    probe, accuracy = train_probe(resolution=32, progress=False)
    assert min(accuracy.values()) >= 0.98, accuracy
    assert evaluate(probe, 2000, seed=1) == pytest.approx(accuracy, abs=0.015)
