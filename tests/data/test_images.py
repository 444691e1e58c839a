"""Image decoding helpers and the decoded-image cache."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.data import cache as image_cache
from diffusion.data import images

try:
    from tests.data.fixtures import bomb_png_bytes, noise_jpeg_bytes
except ImportError:  # pytest run without the repository root on sys.path
    from fixtures import bomb_png_bytes, noise_jpeg_bytes


def test_sixteen_bit_gray_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    rgb = images.to_rgb(Image.fromarray(values))
    assert rgb.mode == "RGB"
    assert np.asarray(rgb)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_transparency_is_composited_on_white():
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.info["transparency"] = 0
    rgb = np.asarray(images.to_rgb(palette))
    assert rgb[0, 0].tolist() == [0, 255, 0]
    assert rgb[3, 3].tolist() == [255, 255, 255]

    half = Image.new("RGBA", (2, 1), (0, 0, 0, 128))
    assert np.asarray(images.to_rgb(half))[0, 0].tolist() == [127, 127, 127]
    gray_alpha = Image.new("LA", (2, 2), (0, 0))
    assert np.asarray(images.to_rgb(gray_alpha))[0, 0].tolist() == [255, 255, 255]


def test_cmyk_float_and_bilevel_become_rgb():
    assert images.to_rgb(Image.new("CMYK", (2, 2), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(images.to_rgb(floats))[0, :, 0].tolist() == [0, 128, 255]
    assert images.to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_square_around_box_is_centred_shifted_inside_and_square():
    assert images.square_around_box((40, 40, 20, 10), 1.0, 100, 100) == (40, 35, 60, 55)
    left, top, right, bottom = images.square_around_box((0, 0, 20, 20), 1.5, 100, 80)
    assert (left, top) == (0, 0) and right - left == bottom - top == 30  # shifted, not shrunk
    assert images.square_around_box((10, 10, 50, 50), 3.0, 100, 60) == (5, 0, 65, 60)  # shrunk to 60


def test_decode_image_crops_the_box_and_draft_decoding_agrees(tmp_path):
    picture = Image.new("RGB", (400, 300), (0, 0, 255))
    picture.paste((255, 0, 0), (100, 100, 200, 200))
    picture.save(tmp_path / "big.jpg", quality=95)
    picture.save(tmp_path / "big.png")
    crop = lambda width, height: (100, 100, 200, 200)
    from_jpeg = images.decode_image(tmp_path / "big.jpg", 16, crop)  # decoded at reduced scale
    from_png = images.decode_image(tmp_path / "big.png", 16, crop)
    assert from_jpeg.dtype == torch.uint8 and from_jpeg.shape == (3, 16, 16)
    inner = from_png[:, 2:-2, 2:-2]  # Pillow's filter also reads a pixel or so around the box
    assert inner[0].min() == 255 and inner[2].max() == 0
    assert (from_jpeg.float() - from_png.float()).abs().mean() < 6
    whole = images.decode_image(tmp_path / "big.png", 30)  # centre square: x 50..350, red at 5..15
    assert whole.shape == (3, 30, 30) and whole[2, 15, 25] == 255 and whole[0, 15, 10] == 255


def test_decode_image_at_height_by_width_takes_the_centred_box_of_that_shape(tmp_path):
    """(height, width): the largest centred box of that shape, resized (a wide picture cut for a tall output)."""
    picture = Image.new("RGB", (400, 200), (0, 0, 255))  # blue, a red band at x 150..250 (the centre)
    picture.paste((255, 0, 0), (150, 0, 250, 200))
    for suffix in ("png", "jpg"):  # the JPEG is decoded at reduced scale (draft): the same crop
        picture.save(tmp_path / f"wide.{suffix}", **({"quality": 95} if suffix == "jpg" else {}))
        tall = images.decode_image(tmp_path / f"wide.{suffix}", (24, 12))  # the centre 100 x 200: all red
        assert tall.shape == (3, 24, 12) and tall[0].float().mean() > 240 and tall[2].float().mean() < 15
    wide = images.decode_image(tmp_path / "wide.png", (10, 20))  # the whole picture, as it is
    assert wide.shape == (3, 10, 20) and wide[0, 5, 10] == 255 and wide[2, 5, 2] == 255 and wide[2, 5, 17] == 255
    assert torch.equal(images.decode_image(tmp_path / "wide.png", 12), images.decode_image(tmp_path / "wide.png", (12, 12)))


def test_small_images_are_upscaled(tmp_path):
    Image.new("RGB", (6, 4), (10, 200, 30)).save(tmp_path / "tiny.png")
    out = images.decode_image(tmp_path / "tiny.png", 32)
    assert out.shape == (3, 32, 32) and out[1].float().mean() == pytest.approx(200, abs=1)


def test_inspect_image_finds_every_kind_of_bad_file(tmp_path):
    data = noise_jpeg_bytes()
    (tmp_path / "good.jpg").write_bytes(data)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "bomb.png").write_bytes(bomb_png_bytes())
    assert images.inspect_image(tmp_path / "good.jpg") == (64, 64)
    for name in ("cut.jpg", "text.png", "bomb.png"):
        with pytest.raises(images.BadImageError):
            images.inspect_image(tmp_path / name)


def test_moderately_large_images_are_refused_inside_the_guard(tmp_path):
    # between Pillow's limit and twice it, Pillow only warns; inside the guard that is an error
    side = int((Image.MAX_IMAGE_PIXELS * 1.5) ** 0.5)
    (tmp_path / "big.png").write_bytes(bomb_png_bytes(side, side))
    with images.refuse_decompression_bombs(), pytest.raises(images.BadImageError, match="bomb"):
        images.inspect_image(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the guard left the filters as they were
        with pytest.raises(Image.DecompressionBombWarning):
            Image.open(tmp_path / "big.png")


def test_model_range_and_flip():
    image = torch.tensor([[[0, 255]]], dtype=torch.uint8).expand(3, 1, 2)
    out = images.uint8_to_model(image)
    assert out.dtype == torch.float32 and out.min() == -1 and out.max() == 1
    assert torch.equal(images.maybe_flip(image, False), image)
    torch.manual_seed(0)
    flips = {tuple(images.maybe_flip(image, True)[0, 0].tolist()) for _ in range(20)}
    assert flips == {(0, 255), (255, 0)}


def test_cache_round_trip_key_and_damaged_file(tmp_path):
    calls = []
    build = lambda: calls.append(1) or {"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "files": ["a", "b"]}
    first = image_cache.cached(tmp_path, "demo", {"resolution": 4}, build)
    second = image_cache.cached(tmp_path, "demo", {"resolution": 4}, build)
    assert len(calls) == 1 and second["files"] == ["a", "b"] and torch.equal(first["images"], second["images"])
    image_cache.cached(tmp_path, "demo", {"resolution": 8}, build)
    assert len(calls) == 2 and len(list(tmp_path.glob("demo-*.pt"))) == 2
    assert not list(tmp_path.glob("*.tmp"))

    path = next(tmp_path.glob("demo-*.pt"))
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable image cache"):
        assert image_cache.load_cache(path) is None


def test_file_fingerprint_changes_when_a_file_changes(tmp_path):
    (tmp_path / "a.png").write_bytes(b"1")
    before = image_cache.cache_key({"files": image_cache.file_fingerprint([tmp_path / "a.png"], tmp_path)})
    (tmp_path / "a.png").write_bytes(b"22")
    after = image_cache.cache_key({"files": image_cache.file_fingerprint([tmp_path / "a.png"], tmp_path)})
    assert before != after
