"""Inputs of diffusers' ``WanAnimatePipeline`` made from our own preprocessing, in upstream Wan2.2-Animate's
format (``../shared/research/WAN_ANIMATE.md``): generation size, letterboxed reference and its CLIP tokens,
30 fps resampling (and back), pose video (``animate.pose.draw_wan``), face crops (``animate.face.wan``),
replace mode's background and mask, and the segment arithmetic of the pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from animate.errors import AnimateError

WAN_FPS = 30.0
RESOLUTIONS = {"480p": 832 * 480, "720p": 1280 * 720}  # target areas
DIVISOR = 16
MODES = ("animate", "replace")
MASK_KERNEL, MASK_ITERATIONS = 7, 3


def generation_size(width: int, height: int, resolution: str = "720p") -> tuple[int, int]:
    """Upstream's ``resize_by_area`` (its fallback branch, the one that always runs): the source's aspect at
    the tier's area, each side floored to a multiple of 16. 1920x1080 -> 1280x720; 640x480 -> 1104x816."""
    if resolution not in RESOLUTIONS:
        raise AnimateError("invalid_option", f"resolution must be one of {', '.join(RESOLUTIONS)}")
    area = RESOLUTIONS[resolution]
    new_h = math.sqrt(area / (width / height))
    new_w = area / new_h
    return int((new_w // DIVISOR) * DIVISOR), int((new_h // DIVISOR) * DIVISOR)


def letterbox_geometry(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(scaled width, scaled height, x offset, y offset) of upstream's ``padding_resize``: the source scaled
    to touch the box on its tighter side, centred, black bars."""
    if src_h / src_w > height / width:
        new_w = int(height / src_h * src_w)
        return new_w, height, int((width - new_w) / 2), 0
    new_h = int(width / src_w * src_h)
    return width, new_h, 0, int((height - new_h) / 2)


def letterbox(image: np.ndarray, width: int, height: int, interpolation: int | None = None) -> np.ndarray:
    """``image`` (H, W[, C]) letterboxed into ``width`` x ``height`` (area when shrinking, else bilinear)."""
    src_h, src_w = image.shape[:2]
    new_w, new_h, x0, y0 = letterbox_geometry(src_w, src_h, width, height)
    if interpolation is None:
        interpolation = cv2.INTER_AREA if width * height < src_w * src_h else cv2.INTER_LINEAR
    scaled = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=interpolation)
    out = np.zeros((height, width, *image.shape[2:]), image.dtype)
    out[y0 : y0 + new_h, x0 : x0 + new_w] = scaled.reshape(new_h, new_w, *image.shape[2:])
    return out


def letterbox_keypoints(keypoints: np.ndarray, src_w: int, src_h: int, width: int, height: int) -> np.ndarray:
    """Keypoints (..., 3) in source pixels -> pixels of the letterboxed frame (scores kept)."""
    new_w, new_h, x0, y0 = letterbox_geometry(src_w, src_h, width, height)
    out = np.array(keypoints, np.float32, copy=True)
    out[..., 0] = out[..., 0] * (new_w / src_w) + x0
    out[..., 1] = out[..., 1] * (new_h / src_h) + y0
    return out


def to_wan_rate(num_frames: int, fps: float) -> np.ndarray:
    """Source frame index of each 30 fps frame (upstream ``get_frame_indices``: round(t x fps)), for a clip
    of ``num_frames`` at ``fps``. At least 2 frames (the pipeline cannot pad a 1-frame list)."""
    count = max(2, round(num_frames * WAN_FPS / fps))
    times = np.arange(count) / WAN_FPS
    return np.clip(np.round(times * fps).astype(int), 0, num_frames - 1)


def from_wan_rate(num_frames: int, fps: float, generated: int) -> np.ndarray:
    """Index into the 30 fps result of each output frame at ``fps`` (nearest in time): ``num_frames`` of them."""
    times = np.arange(num_frames) / fps
    return np.clip(np.round(times * WAN_FPS).astype(int), 0, generated - 1)


def segment_length(frames: int) -> int:
    """The pipeline rounds a segment length that is not 4n+1 down to 4n+1."""
    return (frames - 1) // 4 * 4 + 1


def segments(frames: int, length: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) of each segment the pipeline generates for ``frames`` conditioning frames: the smallest
    T >= frames with (T - overlap) % (length - overlap) == 0, (T - overlap) // (length - overlap) segments
    (the pipeline's T // (length - overlap) when ``check_segments`` holds), segment i at i * (length - overlap). Later segments' first ``overlap`` frames repeat the previous segment's last ones."""
    step = length - overlap
    rest = (frames - overlap) % step
    target = frames + (step - rest if rest else 0)
    return [(i * step, i * step + length) for i in range((target - overlap) // step)]


def check_segments(length: int, overlap: int) -> None:
    """The pipeline counts T // (S - p) segments, one too many (and fails an assert) unless S - p > p:
    segments of at least 5 frames with overlap 1, 13 with overlap 5 (4n+1 after rounding)."""
    if overlap not in (1, 5):
        raise AnimateError("invalid_option", f"overlap_frames must be 1 or 5, got {overlap}")
    least = 5 if overlap == 1 else 13
    if segment_length(max(length, 1)) < least:
        raise AnimateError(
            "invalid_option", f"segment_frames must be >= {least} with overlap_frames {overlap}, got {length}"
        )


def replace_mask(person: np.ndarray) -> np.ndarray:
    """Upstream's replace-mode mask from a person mask (H, W; > 0 = person): dilated by a 7x7 square three
    times, then the whole bounding rectangle of the dilated mask filled (``get_aug_mask`` with a 1x1 grid).
    Exact 0/255 uint8; all 0 when there is no person."""
    binary = (np.asarray(person) > 127).astype(np.uint8)
    if not binary.any():
        return np.zeros_like(binary)
    grown = cv2.dilate(binary, np.ones((MASK_KERNEL, MASK_KERNEL), np.uint8), iterations=MASK_ITERATIONS)
    ys, xs = np.nonzero(grown)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    # get_aug_mask fills the one grid cell [x0, x1) x [y0, y1): the last row and column stay as dilated
    grown[y0:y1, x0:x1] = 1
    return grown * np.uint8(255)


def keypoint_person_mask(
    keypoints: np.ndarray, width: int, height: int, threshold: float = 0.3
) -> np.ndarray:
    """A person mask when no segmentation is at hand: the hull of the seen keypoints, grown by a tenth of the
    body's height (the head top and clothes lie outside the joints)."""
    kp = np.asarray(keypoints)
    seen = kp[kp[:, 2] >= threshold, :2]
    mask = np.zeros((height, width), np.uint8)
    if len(seen) < 3:
        return mask
    hull = cv2.convexHull(np.round(seen).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 255)
    pad = max(1, int(0.1 * float(np.ptp(seen[:, 1]))))
    return cv2.dilate(mask, np.ones((2 * pad + 1, 2 * pad + 1), np.uint8))


def background(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The frame with the mask's region black (upstream: frame x (1 - mask))."""
    return np.where(mask[..., None] > 0, 0, frame).astype(np.uint8)


def clip_input(reference: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Upstream's CLIP input: the letterboxed reference stretched to ``size`` x ``size`` (bicubic), [0, 1]
    then normalised with CLIP's mean / std; (1, 3, size, size) float32."""
    small = cv2.resize(reference, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    small = (small - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return small.transpose(2, 0, 1)[None]
