"""Published systems' preprocessing as named presets: ``--preset mimicmotion | dispose``.

The rules of MimicMotion's ``inference.py`` (``preprocess``, ``run_pipeline``), ``configs/test.yaml`` and
``mimicmotion/dwpose/preprocess.py``, and DisPose's ``inference_ctrl.py`` (the same code with a square
case and 16-frame tiles), so a user can reproduce a published result:

- the reference resized to cover 576 x 1024 (portrait), 1024 x 576 (landscape, and MimicMotion's square)
  or 576 x 576 (DisPose's square) by bilinear interpolation without antialiasing (computed in float32,
  rounded half to even) and centre-cropped (torchvision's rounding of the crop box);
- the pipeline's copy of it through [-1, 1] and back to uint8 by truncation (about a fifth of values drop
  1 level; pose estimation, CMP and DIFT see the image before that);
- driving frames 0, s, 2s, ... with s = 2 * max(1, int(fps / 24)), the video written at 15 fps;
- one linear pose fit for the clip (``animate.pose.global_fit``) and MimicMotion's pose drawing
  (``animate.pose.draw_pose_mimicmotion``); no smoothing, no body fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np

PRESET_NAMES = ("mimicmotion", "dispose")
ASPECT_RATIO = 9 / 16  # width / height of the portrait target (upstream constants.py)


@dataclass(frozen=True)
class Preset:
    name: str
    tile_size: int  # test.yaml num_frames: frames per UNet call
    tile_overlap: int = 6
    resolution: int = 576  # short side of the reference
    sample_stride: int = 2  # driving frames kept: every sample_stride-th (times int(fps / 24))
    fps: float = 15.0  # the output video's frame rate
    square: bool = False  # a square reference stays square (DisPose) instead of going landscape


PRESETS = {
    "mimicmotion": Preset("mimicmotion", tile_size=72),
    "dispose": Preset("dispose", tile_size=16, square=True),
}


def get_preset(name: str) -> Preset:
    from animate.errors import AnimateError

    if name not in PRESETS:
        raise AnimateError("invalid_option", f"preset must be one of {', '.join(PRESET_NAMES)}, got {name!r}")
    return PRESETS[name]


def target_size(width: int, height: int, preset: Preset) -> tuple[int, int]:
    """(width, height) of the preprocessed reference: short side ``resolution``, long side its 16:9 // 64."""
    long = int(preset.resolution / ASPECT_RATIO // 64) * 64
    if height > width:
        return preset.resolution, long
    if height == width and preset.square:
        return preset.resolution, preset.resolution
    return long, preset.resolution


def resize_size(width: int, height: int, target: tuple[int, int]) -> tuple[int, int]:
    """(width, height) the reference is resized to before the crop: covers ``target``, ceil on the long fit."""
    w_target, h_target = target
    ratio = float(height) / float(width)
    if ratio < h_target / w_target:
        return math.ceil(h_target / ratio), h_target
    return w_target, math.ceil(w_target * ratio)


def crop_box(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's ``center_crop``: offsets rounded half to even."""
    left = round((size[0] - target[0]) / 2.0)
    top = round((size[1] - target[1]) / 2.0)
    return left, top, left + target[0], top + target[1]


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W[, C]) uint8 -> ``size`` (width, height): torchvision's tensor ``resize(antialias=None)``."""
    import torch
    import torch.nn.functional as F

    planar = image[..., None] if image.ndim == 2 else image
    x = torch.from_numpy(np.ascontiguousarray(planar.transpose(2, 0, 1)))[None].float()
    y = F.interpolate(x, size=(size[1], size[0]), mode="bilinear", align_corners=False, antialias=False)
    out = y[0].round().clamp(0, 255).to(torch.uint8).numpy().transpose(1, 2, 0)
    return np.ascontiguousarray(out[..., 0] if image.ndim == 2 else out)


def reference_round_trip(rgb: np.ndarray) -> np.ndarray:
    """uint8 -> [-1, 1] -> uint8 in float32 as upstream does it: ``(x / 127.5 - 1 + 1) * 127.5``, truncated."""
    half = np.float32(127.5)
    x = rgb.astype(np.float32) / half - np.float32(1.0)
    return ((x + np.float32(1.0)) * half).astype(np.uint8)


def preprocess_reference(
    rgb: np.ndarray, preset: Preset, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The reference resized and cropped as upstream does (and its alpha mask with the same geometry).

    Pose estimation, CMP and DIFT see this image; only the pipeline's copy takes ``reference_round_trip``.
    """
    height, width = rgb.shape[:2]
    target = target_size(width, height, preset)
    resized = resize_size(width, height, target)
    left, top, right, bottom = crop_box(resized, target)
    out = resize_bilinear(rgb, resized)[top:bottom, left:right]
    if mask is not None:
        mask = np.ascontiguousarray(resize_bilinear(mask, resized)[top:bottom, left:right])
    return np.ascontiguousarray(out), mask


def frame_stride(fps: float, preset: Preset) -> int:
    """Keep every n-th driving frame: ``sample_stride * max(1, int(fps / 24))``."""
    return preset.sample_stride * max(1, int(fps / 24))


def sample_frames(video, preset: Preset, max_frames: int | None = None) -> tuple[Iterator[np.ndarray], int]:
    """A ``DrivingVideo``'s frames 0, s, 2s, ... at its own size (``frame_stride``), and how many there are."""
    stride = frame_stride(video.fps, preset)
    frames, count = islice(video.frames(), 0, None, stride), -(-video.frame_count // stride)
    if max_frames is not None:
        frames, count = islice(frames, max_frames), min(count, max_frames)
    return frames, count
