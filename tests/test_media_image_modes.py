"""Reference-image pixel modes to 8-bit RGB (+ mask): exact values against the scaling rule by hand."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from animate.media import load_image
from animate.settings import MediaLimits

#: Deep and float greyscale arrive in TIFF when an operator accepts it (formats are settings); 2-row images.
DEEP = MediaLimits(image_formats=("PNG", "TIFF"), min_image_side=1)


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def grey(values, mode: str, dtype) -> Image.Image:
    image = Image.fromarray(np.array([values] * 2, dtype=dtype))
    assert image.mode == mode
    return image


# 8-bit = round-half-up(value / peak x 255), clipped to 0..255; peak = 65535 for 16-bit files and for
# integers above 255, 255 for integers within 0..255, the largest value (at least 1.0) for floats.
@pytest.mark.parametrize(
    ("image", "fmt", "limits", "expected"),
    [
        (
            grey([0, 128, 255, 257, 32768, 65407, 65535], "I;16", np.uint16),
            "PNG",
            DEEP,
            [0, 0, 1, 1, 128, 255, 255],
        ),
        (grey([0, 128, 255], "I;16", np.uint16), "TIFF", DEEP, [0, 0, 1]),  # 16-bit even when all are low
        (grey([0, 257, 65535], "I;16B", ">u2"), "TIFF", DEEP, [0, 1, 255]),
        (grey([0, 128, 256], "I", np.int32), "TIFF", DEEP, [0, 0, 1]),  # over 255: a 16-bit range
        (grey([0, 100, 255], "I", np.int32), "TIFF", DEEP, [0, 100, 255]),
        (grey([-5, 0, 256, 1000, 70000], "I", np.int32), "TIFF", DEEP, [0, 0, 1, 4, 255]),
        (grey([-1.0, 0.0, 0.5, 2.0], "F", np.float32), "TIFF", DEEP, [0, 0, 64, 255]),
        (grey([0.0, 0.25, 0.5], "F", np.float32), "TIFF", DEEP, [0, 64, 128]),
    ],
    ids=["I;16", "I;16-low", "I;16B", "I-256", "I-8bit-range", "I-wide", "F-over-1", "F-under-1"],
)
def test_deep_greyscale_scaled_to_8_bits(image, fmt, limits, expected):
    loaded = load_image(encoded(image, fmt), limits)
    assert loaded.rgb.dtype == np.uint8
    assert loaded.rgb[0, :, 0].tolist() == expected
    assert (loaded.rgb == loaded.rgb[..., :1]).all()  # grey stays grey
    assert loaded.mask is None and not loaded.has_alpha


def test_palette_without_transparency_is_opaque_rgb():
    image = Image.new("P", (40, 40), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    loaded = load_image(encoded(image, "PNG"))
    assert loaded.rgb[0, 0].tolist() == [255, 0, 0]
    assert loaded.mask is None and not loaded.has_alpha


def test_greyscale_transparency_becomes_mask():
    array = np.full((40, 40), 200, np.uint8)
    array[:, :20] = 7  # the transparent grey level
    loaded = load_image(encoded(Image.fromarray(array), "PNG", transparency=7))
    assert loaded.has_alpha
    assert loaded.mask[:, :20].max() == 0 and loaded.mask[:, 20:].min() == 255
    assert loaded.rgb[0, 30].tolist() == [200, 200, 200]


def test_opaque_alpha_is_no_mask_but_alpha():
    loaded = load_image(encoded(Image.new("RGBA", (40, 40), (1, 2, 3, 255)), "PNG"))
    assert loaded.mask is None and loaded.has_alpha


def test_to_pil_round_trips_the_pixels():
    array = np.random.default_rng(0).integers(0, 255, (36, 40, 3), np.uint8)
    loaded = load_image(encoded(Image.fromarray(array), "PNG"))
    pil = loaded.to_pil()
    assert pil.mode == "RGB" and np.array_equal(np.asarray(pil), array)
