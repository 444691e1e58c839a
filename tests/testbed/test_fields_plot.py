"""plot_fields writes a PNG of the 2-D density and the denoiser's arrows; it refuses what it cannot draw."""

import pytest

from diffusion.errors import UserError
from diffusion.testbed import plot_fields, random_mixture, toy_mixture_2d


def test_plot_fields_writes_a_png(tmp_path):
    path = plot_fields(toy_mixture_2d(), 0.2, tmp_path / "fields.png", class_label=0, resolution=40, arrows=8)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_fields_refuses_other_dimensions_and_unknown_classes(tmp_path):
    with pytest.raises(UserError):
        plot_fields(random_mixture(dim=3), 0.2, tmp_path / "x.png")
    with pytest.raises(UserError):
        plot_fields(toy_mixture_2d(), 0.2, tmp_path / "x.png", class_label=2)
