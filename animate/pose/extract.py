"""From media to poses: run an estimator over a video or a reference image and clean up the result.

Videos: estimate every frame (downscaled to ``max_side`` for speed, coordinates mapped back), track the
main person, fill short gaps, smooth. References: one static pass, retried on padded, upscaled, masked
and tiled views before concluding that nobody is there, because references come in every crop and style.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from animate.media.prefetch import prefetched
from animate.pose.errors import PoseError
from animate.pose.estimator import PoseEstimator
from animate.pose.gaps import fill_gaps
from animate.pose.smoothing import SmoothingOptions, smooth_keypoints
from animate.pose.tracking import TrackingOptions, track_main_person
from animate.pose.types import Pose, PoseSequence

#: Called with (frames done, frames expected) as estimation advances; the expected count may be an estimate.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class SequenceOptions:
    max_side: int = 1024  # frames are estimated at most this size (long side); the pose models see 256 px
    max_gap_seconds: float = 0.3  # missing frames/keypoints up to this long are interpolated
    min_detected_fraction: float = 0.5  # below this the video "has no person" (no_person_detected)
    smoothing: SmoothingOptions | None = field(default_factory=SmoothingOptions)
    tracking: TrackingOptions = field(default_factory=TrackingOptions)
    keep_masks: bool = False  # segmentation masks per frame cost W*H bytes each


def estimation_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Even (width, height) with the same aspect, long side at most ``max_side``."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _default_estimator(static: bool, segmentation: bool) -> PoseEstimator:
    from animate.pose.mediapipe_estimator import MediaPipeEstimator

    return MediaPipeEstimator(static=static, segmentation=segmentation)


def finish_sequence(
    candidates: list[list[Pose]], width: int, height: int, fps: float, options: SequenceOptions | None = None
) -> PoseSequence:
    """Track, validate, gap-fill and smooth per-frame detections already in output pixels."""
    options = options or SequenceOptions()
    frames = track_main_person(candidates, width, height, options.tracking)
    sequence = PoseSequence(frames, width, height, fps)
    if not frames or sequence.detected_fraction() < options.min_detected_fraction:
        raise PoseError(
            "no_person_detected",
            f"a person was found in {sequence.detected_fraction():.0%} of {len(frames)} frames; "
            f"at least {options.min_detected_fraction:.0%} are needed",
        )
    max_gap = max(1, round(options.max_gap_seconds * fps)) if fps > 0 else 0
    keypoints, detected = fill_gaps(sequence.keypoints, sequence.detected, max_gap)
    if options.smoothing is not None:
        keypoints = smooth_keypoints(keypoints, fps, height, options.smoothing)
    return sequence.with_keypoints(keypoints, detected)


def estimate_frames(
    frames: Iterable[np.ndarray],
    estimator: PoseEstimator,
    *,
    width: int,
    height: int,
    total: int = 0,
    progress: ProgressCallback | None = None,
    keep_masks: bool = False,
) -> list[list[Pose]]:
    """Every person in every frame, mapped from the frames' pixels to ``width`` x ``height``."""
    out: list[list[Pose]] = []
    estimator.reset()
    for index, rgb in enumerate(frames):
        h, w = rgb.shape[:2]
        scale = (width / w, height / h)
        people = []
        for pose in estimator.detect(rgb):
            mapped = pose.transformed(scale) if scale != (1.0, 1.0) else replace(pose, mask=None)
            if keep_masks and pose.mask is not None:
                mask = pose.mask if (w, h) == (width, height) else cv2.resize(pose.mask, (width, height))
                mapped = replace(mapped, mask=mask)
            people.append(mapped)
        out.append(people)
        if progress is not None:
            progress(index + 1, max(total, index + 1))
    return out


def estimate_video(
    video: object,
    estimator: PoseEstimator | None = None,
    *,
    max_frames: int | None = None,
    fps: float | None = None,
    options: SequenceOptions | None = None,
    progress: ProgressCallback | None = None,
) -> PoseSequence:
    """Poses of the main person in every frame of a ``DrivingVideo`` (or a path to one).

    Raises ``PoseError('no_person_detected')`` when the person is missing from most frames.
    """
    from animate.media import DrivingVideo, open_video

    options = options or SequenceOptions()
    if not isinstance(video, DrivingVideo):
        video = open_video(Path(str(video)))
    size = estimation_size(video.width, video.height, options.max_side)
    own = estimator is None
    estimator = estimator or _default_estimator(static=False, segmentation=options.keep_masks)
    try:
        candidates = estimate_frames(
            prefetched(video.frames(fps=fps, max_frames=max_frames, size=size), depth=8, name="pose-decode"),
            estimator,
            width=video.width,
            height=video.height,
            total=video.output_frame_count(fps, max_frames),
            progress=progress,
            keep_masks=options.keep_masks,
        )
    finally:
        if own:
            estimator.close()
    return finish_sequence(candidates, video.width, video.height, fps or video.fps, options)


# ---- reference images -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _View:
    """An image derived from the reference: view pixels = reference pixels * scale + offset."""

    name: str
    rgb: np.ndarray
    scale: float
    offset: tuple[float, float]


def _composite(rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    # Transparent pixels may hold anything (often black); a neutral grey gives the detector clean edges.
    if mask is None:
        return rgb
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    return (rgb * alpha + 127.0 * (1.0 - alpha) + 0.5).astype(np.uint8)


def _views(rgb: np.ndarray, mask: np.ndarray | None) -> Iterator[_View]:
    h, w = rgb.shape[:2]
    base = _composite(rgb, mask)
    yield _View("as_is", base, 1.0, (0.0, 0.0))
    # A person filling (or cut by) the frame: the detector wants context around them.
    pad = round(0.3 * max(h, w))
    padded = cv2.copyMakeBorder(base, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(127, 127, 127))
    yield _View("padded", padded, 1.0, (float(pad), float(pad)))
    if mask is not None and (mask > 127).any():
        ys, xs = np.nonzero(mask > 127)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        m = round(0.15 * max(x1 - x0, y1 - y0))
        x0, y0, x1, y1 = max(0, x0 - m), max(0, y0 - m), min(w, x1 + m), min(h, y1 + m)
        yield _View("alpha_crop", np.ascontiguousarray(base[y0:y1, x0:x1]), 1.0, (-float(x0), -float(y0)))
    if max(h, w) < 768:
        s = 1024 / max(h, w)
        upscaled = cv2.resize(base, (round(w * s), round(h * s)), interpolation=cv2.INTER_CUBIC)
        yield _View("upscaled", upscaled, s, (0.0, 0.0))
    # A small person in a large picture: look at overlapping crops, each upscaled to the original size.
    cw, ch = round(w * 0.6), round(h * 0.6)
    for x0 in (0, w - cw):
        for y0 in (0, (h - ch) // 2, h - ch):
            crop = base[y0 : y0 + ch, x0 : x0 + cw]
            s = max(h, w) / max(ch, cw)
            tile = cv2.resize(crop, (round(cw * s), round(ch * s)))
            yield _View(f"tile_{x0}_{y0}", tile, s, (-x0 * s, -y0 * s))


def _strong_body(pose: Pose, threshold: float = 0.5) -> int:
    return int((pose.keypoints[:17, 2] >= threshold).sum())


def estimate_image(
    image: object,
    estimator: PoseEstimator | None = None,
    *,
    good_keypoints: int = 13,
    min_keypoints: int = 4,
) -> Pose:
    """The main person's pose in a reference image (``ReferenceImage`` or RGB array).

    Views are tried in order until one shows ``good_keypoints`` body keypoints with score >= 0.5; the best
    view wins otherwise. Fewer than ``min_keypoints`` everywhere -> ``PoseError('no_person_detected')``.
    """
    rgb = getattr(image, "rgb", image)
    mask = getattr(image, "mask", None)
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3:
        raise TypeError("estimate_image needs a ReferenceImage or an (H, W, 3) uint8 array")
    h, w = rgb.shape[:2]
    own = estimator is None
    estimator = estimator or _default_estimator(static=True, segmentation=True)
    best: tuple[tuple[int, float], Pose, _View] | None = None
    try:
        for view in _views(rgb, mask):
            estimator.reset()
            people = estimator.detect(view.rgb)
            for pose in people:
                key = (_strong_body(pose), pose.body_score())
                if best is None or key > best[0]:
                    best = (key, pose, view)
            if best is not None and best[0][0] >= good_keypoints:
                break
    finally:
        if own:
            estimator.close()
    if best is None or best[0][0] < min_keypoints:
        raise PoseError("no_person_detected", "no person found in the reference image")
    _, pose, view = best
    inv = 1.0 / view.scale
    mapped = pose.transformed((inv, inv), (-view.offset[0] * inv, -view.offset[1] * inv))
    if pose.mask is not None:
        # With WARP_INVERSE_MAP the matrix maps each reference pixel to the view pixel it samples.
        to_view = np.array([[view.scale, 0.0, view.offset[0]], [0.0, view.scale, view.offset[1]]], np.float32)
        mask_ref = cv2.warpAffine(pose.mask, to_view, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        mapped = replace(mapped, mask=mask_ref)
    mapped.keypoints[:, 2] *= _inside(mapped.keypoints, w, h)
    return mapped


def _inside(keypoints: np.ndarray, width: int, height: int, margin: float = 0.02) -> np.ndarray:
    """1 for keypoints on the reference (tiles and padding can place guesses outside it), else 0."""
    mx, my = margin * width, margin * height
    x, y = keypoints[:, 0], keypoints[:, 1]
    return ((x >= -mx) & (x <= width + mx) & (y >= -my) & (y <= height + my)).astype(np.float32)


def estimate_sequence_from_image(image: object, estimator: PoseEstimator | None = None) -> PoseSequence:
    """A one-frame ``PoseSequence`` (fps 0) for a reference image: the JSON form ``animate pose`` writes."""
    pose = estimate_image(image, estimator)
    rgb = getattr(image, "rgb", image)
    return PoseSequence([replace(pose, mask=None)], int(rgb.shape[1]), int(rgb.shape[0]), 0.0)
