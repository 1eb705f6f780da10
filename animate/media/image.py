"""Reference images: JPEG, PNG or WebP, decoded defensively into RGB plus an optional alpha mask."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from animate.media.errors import MediaError
from animate.settings import MediaLimits

# Pillow's own bomb guard, lowered from its 89 MP default; load_image also checks the header first.
Image.MAX_IMAGE_PIXELS = MediaLimits().max_image_pixels

ImageSource = str | Path | bytes | BinaryIO


@dataclass(frozen=True)
class ReferenceImage:
    """An upright RGB image and, when the file had a meaningful alpha channel, its foreground mask."""

    rgb: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) uint8, 0 background .. 255 foreground
    format: str  # "JPEG" | "PNG" | "WEBP"
    has_alpha: bool = False  # the file had an alpha channel (``mask`` is None when it was fully opaque)

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.rgb)


def _read_bytes(source: ImageSource, limits: MediaLimits) -> bytes:
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if "://" in str(source):
            raise MediaError("unsupported_source", f"only local files are accepted, got {source!s}")
        if not path.is_file():
            raise MediaError("not_found", f"no such file: {path}")
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise MediaError(
                "too_large", f"{path.name} is {size} bytes; the limit is {limits.max_file_bytes}"
            )
        data = path.read_bytes()
    else:
        data = source.read(limits.max_file_bytes + 1)
    if not data:
        raise MediaError("empty_media", "the image file is empty (0 bytes)")
    if len(data) > limits.max_file_bytes:
        raise MediaError("too_large", f"the image is over the {limits.max_file_bytes}-byte limit")
    return data


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float greyscale to 8 bits (Pillow's convert("L") would clip)."""
    array = np.asarray(image, dtype=np.float64)
    peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
    if image.mode == "F":
        peak = max(float(array.max(initial=0)), 1.0)
    return Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def load_image(source: ImageSource, limits: MediaLimits | None = None) -> ReferenceImage:
    """Decode a reference image, or raise ``MediaError`` with a stable code.

    The format is decided by decoding, never by the file name. The pixel count is checked from the
    header before the pixels are decoded, so a decompression bomb fails in microseconds.
    """
    limits = limits or MediaLimits()
    data = _read_bytes(source, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise MediaError(
            "unsupported_format", "not an image in a supported format (JPEG, PNG, WebP)"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(
            "too_large", f"the image has too many pixels (limit {limits.max_image_pixels})"
        ) from exc
    except OSError as exc:
        raise MediaError("corrupt_media", f"the image could not be read: {exc}") from exc

    fmt = str(image.format)
    if fmt not in limits.image_formats:
        raise MediaError(
            "unsupported_format",
            f"{image.format or 'unknown'} images are not accepted; send {', '.join(limits.image_formats)}",
        )
    if getattr(image, "n_frames", 1) > 1:
        raise MediaError("unsupported_format", "animated images are not accepted; send a still image")
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise MediaError(
            "too_large", f"the image is {width}x{height}; the limit is {limits.max_image_pixels} pixels"
        )
    if min(width, height) < limits.min_image_side:
        raise MediaError(
            "too_small", f"the image is {width}x{height}; each side must be >= {limits.min_image_side} px"
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError("corrupt_media", f"the image is damaged or truncated: {exc}") from exc

    return _to_reference(image, fmt)


def _to_reference(image: Image.Image, fmt: str) -> ReferenceImage:
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    elif mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _to_8bit(image)
    elif mode == "L" and "transparency" in image.info:
        image = image.convert("RGBA")
    mask = None
    if image.mode == "RGBA":
        alpha = np.asarray(image.getchannel("A"), dtype=np.uint8)
        # A fully opaque alpha channel says nothing about where the person is.
        mask = alpha.copy() if alpha.min() < 255 else None
    rgb = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return ReferenceImage(rgb=rgb, mask=mask, format=fmt, has_alpha=image.mode == "RGBA")
