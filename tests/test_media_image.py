from __future__ import annotations

import io
import time

import numpy as np
import pytest
from _media import png_bomb
from conftest import ANIME_PNG, HERO_RGBA, WOMAN_JPG
from PIL import Image

from animate.media import MediaError, load_image
from animate.settings import MediaLimits


def _code(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.code


def test_real_jpeg_reference(data_dir):
    image = load_image(WOMAN_JPG)
    assert (image.width, image.height, image.format) == (1080, 1920, "JPEG")
    assert image.rgb.dtype == np.uint8 and image.rgb.shape == (1920, 1080, 3)
    assert image.mask is None


def test_real_png_references(data_dir):
    anime = load_image(ANIME_PNG)
    assert (anime.width, anime.height) == (704, 1216)
    hero = load_image(HERO_RGBA)
    assert (hero.width, hero.height) == (576, 768)
    # Its alpha channel is fully opaque: it says nothing about where the person is.
    assert hero.has_alpha and hero.mask is None


def test_alpha_becomes_foreground_mask(tmp_path):
    rgba = np.zeros((64, 48, 4), np.uint8)
    rgba[..., :3] = (30, 60, 90)
    rgba[16:48, 12:36, 3] = 255  # an opaque figure on a transparent background
    rgba[16, 12, 3] = 128  # a soft edge keeps its value
    path = tmp_path / "figure.png"
    Image.fromarray(rgba, "RGBA").save(path)
    loaded = load_image(path)
    assert loaded.has_alpha and loaded.mask is not None and loaded.mask.shape == (64, 48)
    assert loaded.mask[30, 20] == 255 and loaded.mask[0, 0] == 0 and loaded.mask[16, 12] == 128
    assert loaded.rgb.shape == (64, 48, 3) and tuple(loaded.rgb[30, 20]) == (30, 60, 90)


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((40, 80, 3), np.uint8)
    array[:, :40] = (255, 0, 0)  # red left half, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    image = load_image(path)
    assert (image.width, image.height) == (40, 80)
    # After a clockwise quarter turn the stored left half is on top.
    assert image.rgb[:40, :, 0].mean() > 200 and image.rgb[40:, :, 0].mean() < 50


@pytest.mark.parametrize("mode", ["P", "L", "CMYK", "I;16", "LA"])
def test_other_modes_become_rgb(tmp_path, mode):
    gradient = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    base = Image.fromarray(np.dstack([gradient] * 3))
    if mode == "I;16":
        image = Image.fromarray(gradient.astype(np.uint16) * 257)
        assert image.mode == "I;16"
    elif mode == "LA":
        image = Image.fromarray(np.dstack([gradient, np.full_like(gradient, 128)]), mode="LA")
    elif mode == "P":
        image = base.quantize(64)
    else:
        image = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = tmp_path / f"img.{fmt.lower()}"
    image.save(path, format=fmt)
    loaded = load_image(path)
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (48, 64, 3)
    # The gradient survives the conversion (not clipped to white or black).
    row = loaded.rgb[24, :, 1].astype(int)
    assert row[0] < 40 and row[-1] > 215 and np.all(np.diff(row) >= -12)
    assert (loaded.mask is not None) == (mode == "LA")


def test_palette_transparency_becomes_mask(tmp_path):
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (10, 10, 30, 30))
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    loaded = load_image(path)
    assert loaded.mask is not None
    assert loaded.mask[20, 20] == 255 and loaded.mask[0, 0] == 0


def test_webp_and_bytes(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, format="WEBP", lossless=True)
    loaded = load_image(buffer.getvalue())
    assert loaded.format == "WEBP" and tuple(loaded.rgb[0, 0]) == (10, 200, 30)


def test_gif_refused(tmp_path):
    path = tmp_path / "a.gif"
    Image.new("RGB", (64, 64)).save(path)
    with pytest.raises(MediaError) as excinfo:
        load_image(path)
    assert _code(excinfo) == "unsupported_format"


def test_animated_webp_refused(tmp_path):
    path = tmp_path / "anim.webp"
    frames = [Image.new("RGB", (64, 64), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(MediaError) as excinfo:
        load_image(path)
    assert _code(excinfo) == "unsupported_format"


def test_text_renamed_png_refused(tmp_path):
    path = tmp_path / "photo.png"
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(MediaError) as excinfo:
        load_image(path)
    assert _code(excinfo) == "unsupported_format"


def test_zero_bytes(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(MediaError) as excinfo:
        load_image(path)
    assert _code(excinfo) == "empty_media"


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    with pytest.raises(MediaError) as excinfo:
        load_image(path)
    assert _code(excinfo) == "corrupt_media"


def test_decompression_bomb_fails_fast(tmp_path):
    path = png_bomb(tmp_path / "bomb.png")
    assert path.stat().st_size < 2000
    start = time.perf_counter()
    with pytest.raises(MediaError) as excinfo:
        load_image(path)
    assert _code(excinfo) == "too_large"
    # Refused from the header: nothing near 30 GB of pixels was allocated or decoded.
    assert time.perf_counter() - start < 5


def test_tiny_image_refused(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    with pytest.raises(MediaError) as excinfo:
        load_image(path)
    assert _code(excinfo) == "too_small"


def test_limits_are_settings(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(MediaError) as excinfo:
        load_image(path, MediaLimits(max_image_pixels=5_000))
    assert _code(excinfo) == "too_large"
    with pytest.raises(MediaError) as excinfo:
        load_image(path, MediaLimits(max_file_bytes=10))
    assert _code(excinfo) == "too_large"


def test_missing_and_url(tmp_path):
    with pytest.raises(MediaError) as excinfo:
        load_image(tmp_path / "nope.jpg")
    assert _code(excinfo) == "not_found"
    with pytest.raises(MediaError) as excinfo:
        load_image("https://example.com/a.jpg")
    assert _code(excinfo) == "unsupported_source"
