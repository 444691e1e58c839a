"""The tiny random Stable Diffusion 1.x pipeline (tests/pretrained/tiny_sd.py), built once per test process."""

import pytest


@pytest.fixture(scope="session")
def tiny_sd_files(tmp_path_factory):
    """(the diffusers StableDiffusionPipeline, its saved folder, the same weights as an original single file)."""
    from tiny_sd import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("sd"))
