"""Reference-image limits at their exact boundaries, and every refusal's code and message."""

from __future__ import annotations

import io

import pytest
from _media import png_bomb
from PIL import Image

from animate.media import MediaError, load_image
from animate.settings import MediaLimits


def png_bytes(width: int = 40, height: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 100, 50)).save(buffer, format="PNG")
    return buffer.getvalue()


def refusal(source, limits: MediaLimits | None = None) -> MediaError:
    with pytest.raises(MediaError) as excinfo:
        load_image(source, limits)
    return excinfo.value


def test_pixel_and_side_limits_at_their_boundary():
    data = png_bytes(40, 32)  # 1280 pixels, shorter side 32
    assert load_image(data, MediaLimits(max_image_pixels=1280, min_image_side=32)).width == 40
    error = refusal(data, MediaLimits(max_image_pixels=1279))
    assert (error.code, error.message) == ("too_large", "the image is 40x32; the limit is 1279 pixels")
    error = refusal(data, MediaLimits(min_image_side=33))
    assert (error.code, error.message) == ("too_small", "the image is 40x32; each side must be >= 33 px")


def test_byte_limit_at_its_boundary_for_files_bytes_and_streams(tmp_path):
    data = png_bytes()
    path = tmp_path / "ref.png"
    path.write_bytes(data)
    exact, under = MediaLimits(max_file_bytes=len(data)), MediaLimits(max_file_bytes=len(data) - 1)
    for source in (path, data, io.BytesIO(data)):
        assert load_image(source, exact).height == 32
    error = refusal(path, under)
    assert (error.code, error.message) == (
        "too_large",
        f"ref.png is {len(data)} bytes; the limit is {len(data) - 1}",
    )
    for source in (data, io.BytesIO(data)):
        error = refusal(source, under)
        assert (error.code, error.message) == (
            "too_large",
            f"the image is over the {len(data) - 1}-byte limit",
        )


def test_refusal_messages(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "photo.png"
    text.write_text("this is not an image\n" * 20)
    gif = io.BytesIO()
    Image.new("RGB", (64, 64)).save(gif, format="GIF")
    cases = [
        (
            "https://example.com/a.jpg",
            "unsupported_source",
            "only local files are accepted, got https://example.com/a.jpg",
        ),
        (tmp_path / "nope.jpg", "not_found", f"no such file: {tmp_path / 'nope.jpg'}"),
        (empty, "empty_media", "the image file is empty (0 bytes)"),
        (b"", "empty_media", "the image file is empty (0 bytes)"),
        (text, "unsupported_format", "not an image in a supported format (JPEG, PNG, WebP)"),
        (gif.getvalue(), "unsupported_format", "GIF images are not accepted; send JPEG, PNG, WEBP"),
    ]
    for source, code, message in cases:
        error = refusal(source)
        assert (error.code, error.message) == (code, message), source


def test_two_frame_animation_refused():
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (64, 64), (i * 200, 0, 0)) for i in range(2)]
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], duration=100)
    error = refusal(buffer.getvalue())
    assert (error.code, error.message) == (
        "unsupported_format",
        "animated images are not accepted; send a still image",
    )


@pytest.mark.parametrize("side", [7_000, 100_000])
def test_bomb_headers_refused_with_the_limit(tmp_path, side):
    # 49 MP makes Pillow warn (over 40 MP), 10 GP makes it raise (over twice that): both are too_large.
    error = refusal(png_bomb(tmp_path / "bomb.png", side=side))
    assert (error.code, error.message) == ("too_large", "the image has too many pixels (limit 40000000)")


def test_damaged_pixels_name_the_problem():
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").save(buffer, format="JPEG")
    data = buffer.getvalue()
    error = refusal(data[: len(data) // 3])
    assert error.code == "corrupt_media"
    assert error.message.startswith("the image is damaged or truncated: ")
