"""Shared test set-up: helper modules on the path, and GPU tests skipped where there is no GPU."""

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE / "data"):  # tiny.py (small real configs) and data/fixtures.py (data the tests make)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """One tiny toy-birds model (16 px, seconds to train), shared by the evaluation, inspection and notebook tests."""
    from diffusion.tools.workbench import TINY, train_model

    return train_model(tmp_path_factory.mktemp("tiny_model"), *TINY, steps=30)


@pytest.fixture(scope="session")
def two_step_checkpoint(tmp_path_factory) -> Path:
    """The tiny train config's model after 2 steps (a second or two): for tests of what the commands refuse, warn
    about or survive, which need a real checkpoint but no trained one. Read-only: tests must not write it."""
    from diffusion.training import train
    from tiny import tiny_train_cfg

    return train(tiny_train_cfg(tmp_path_factory.mktemp("two_step_run"), "trainer.max_steps=2"))


@pytest.fixture(scope="session")
def tiny_sd_files(tmp_path_factory):
    """A tiny random Stable Diffusion 1.x pipeline (tests/pretrained/tiny_sd.py), built once per test process and shared
    by the SD tests and notebook 06: (the diffusers StableDiffusionPipeline, its saved folder, the same weights as an
    original single file)."""
    if str(HERE / "pretrained") not in sys.path:
        sys.path.insert(0, str(HERE / "pretrained"))
    from tiny_sd import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="session")
def quick_probe_cache(tmp_path_factory) -> Path:
    """A cache folder (for DIFFUSION_CACHE) holding a 16 px toy-birds probe trained for a few seconds."""
    from diffusion.evaluation.probe import probe_path, save_probe, train_probe

    cache = tmp_path_factory.mktemp("cache")
    probe, accuracy = train_probe(resolution=16, steps=60, batch_size=32, held_out_images=100, progress=False)
    save_probe(probe, accuracy, probe_path(16, cache / "probes"))
    return cache


def pytest_configure(config):
    """Under pytest-xdist each worker gets one CPU thread, so two workers share a 2-core machine without contention."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
