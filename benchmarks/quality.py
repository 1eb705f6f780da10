"""Quality of the CPU warp engine: self-reconstruction and cross-identity cases on the shared data.

    .venv/bin/python benchmarks/quality.py [--frames 48] [--size 512] [--cases dance,talking,...]
                                           [--method warp|no-body|static] [--out DIR] [--json PATH]

Self-reconstruction (the protocol of issue 18): the first frame of a clip is the reference and the same
clip drives, so the driving frames are the ground truth. Variants are made at run time from the shared
clips, the same transform applied to every frame (so the first frame stays the reference): a half-body
crop at the thighs, a horizontal flip, a zoomed crop. Cross-identity: the shared photos (and a half-body,
transparent-background crop of the drawn character) driven by the dance; only the pose can be compared.

Metrics, per case and as a mean (MediaPipe BlazePose on the output and on the driving frames, both at the
output size):
- PCK@0.05 / PCK@0.1: share of body keypoints (COCO-17, seen inside the frame in both) within 5% / 10% of the driving
  person's height (the height of its segmentation mask's box); kp err: mean distance over that height.
- limb angle: mean |angle difference| in degrees of the 8 limb segments (upper arms, forearms, thighs,
  shins) seen inside the frame in both.
- masked PSNR / SSIM (self-reconstruction only): inside the driving frame's person mask (MediaPipe's pose
  segmentation > 0.5), PSNR over RGB, SSIM (Gaussian window, sigma 1.5) on luma averaged over the mask.
- face: share of frames whose driving frame shows a face (found by the detector in a square crop around
  the driving head keypoints, scaled to 160 px) where the output's same crop shows one too. Detector:
  dlib's HOG frontal face detector when ``dlib`` imports, else MediaPipe face detection (named in the table).
- bg PSNR (self-reconstruction only): PSNR over RGB where the reference person stood but the driving
  frame shows background (the reference's person mask minus both frames' person masks, each grown by 2%
  of the person's height): how well the engine fills what the reference person hid.
- hand PSNR (self-reconstruction only): PSNR over RGB inside a disc on each seen driving hand: centred
  past the wrist by 0.4 of the forearm (the palm), radius 5% of the person's height.
- area (self-reconstruction only): the output person's mask area over the driving person's, mean over
  frames (1 = the same size; a body fitted too thin, background showing through the chest, is < 1).
- width: the mask's width across each limb segment and the torso at its middle (perpendicular to it,
  each sequence measured on its own keypoints and mask), output over driving: the median over the frames
  seen in both per segment (robust to an arm that touches the torso in one and not the other), then the
  mean over the segments (self-reconstruction only; < 1: limbs or torso drawn too narrow).
- change: mean |frame t - frame t-1| of the output over the same of the driving frames (1 = as steady as
  the real clip; a smear or flicker is > 1, a frozen picture 0).
- fps: frames over the seconds of the whole job (pose, body fit, motion, render; no encode) in this
  process; RSS: the process's peak resident memory while the case ran (sampled every 50 ms).

``--method static`` scores the reference itself repeated (no motion), the floor any engine must beat.
``--out DIR`` writes side-by-side PNGs (reference | driving | output) of 4 frames per case.
Default (48 frames, long side 512) takes a few minutes on 2 cores; the issue's size is ``--size 1024``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DANCE = DATA / "driving" / "dance_musepose.mp4"
TALKING = DATA / "driving" / "talking_head_animateanyone.mp4"
REFERENCES = DATA / "reference"

# COCO-17 limb segments: upper arms, forearms, thighs, shins.
LIMBS = ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16))
LIMB_NAMES = (
    "l_upper_arm",
    "l_forearm",
    "r_upper_arm",
    "r_forearm",
    "l_thigh",
    "l_shin",
    "r_thigh",
    "r_shin",
)
SELF_CASES = ("dance", "talking", "dance_half", "dance_flip", "dance_zoom", "dance_turned", "dance_narrow")
# Side views: the dance from a frame where the dancer stands turned (a three-quarter view), and the same
# clip squeezed to 60% of its width (shoulders, hips and head as narrow as a body seen nearly side-on).
SIDE_START, NARROW = 200, 0.6
CROSS_CASES = ("woman_dance", "anime_dance", "hero_dance", "anime_half_dance")
ALL_CASES = SELF_CASES + CROSS_CASES
KP_SCORE = 0.5  # a keypoint counts as seen at this MediaPipe visibility


@dataclass
class CaseResult:
    case: str
    kind: str  # self | cross
    frames: int
    size: tuple[int, int]
    motion: str = "-"
    pck05: float = float("nan")
    pck10: float = float("nan")
    kp_error: float = float("nan")
    limb_angle: float = float("nan")
    psnr: float = float("nan")
    ssim: float = float("nan")
    face: float = float("nan")
    bg_psnr: float = float("nan")
    hand_psnr: float = float("nan")
    area: float = float("nan")
    width: float = float("nan")
    change: float = float("nan")
    fps: float = float("nan")
    rss_mb: float = float("nan")
    limbs: dict[str, float] = field(default_factory=dict)  # limb angle error per segment (degrees)
    widths: dict[str, float] = field(default_factory=dict)  # silhouette width ratio per segment
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- inputs made at run time


def _decode(path: Path, frames: int, start: int = 0) -> tuple[list[np.ndarray], float]:
    from animate.media import open_video

    with open_video(path) as video:
        fps = float(video.fps)
        return list(video.frames(max_frames=start + frames))[start:], fps


def _first_pose(frame: np.ndarray) -> np.ndarray:
    from animate.pose import MediaPipeEstimator

    with MediaPipeEstimator(static=True, whole_body=False, segmentation=False) as estimator:
        people = estimator.detect(frame)
    if not people:
        raise SystemExit("no person in the first frame")
    return people[0].keypoints


def _thigh_y(keypoints: np.ndarray) -> int:
    """Row halfway between the hips and the knees (the half-body cut)."""
    hips = keypoints[[11, 12], 1].mean()
    knees = keypoints[[13, 14], 1].mean()
    return round(float(0.5 * (hips + knees)))


def _transform_clip(case: str, frames: list[np.ndarray]) -> list[np.ndarray]:
    if case == "dance_flip":
        return [np.ascontiguousarray(f[:, ::-1]) for f in frames]
    height, width = frames[0].shape[:2]
    if case == "dance_half":
        cut = _thigh_y(_first_pose(frames[0]))
        return [np.ascontiguousarray(f[:cut]) for f in frames]
    if case == "dance_narrow":
        size = (round(width * NARROW / 2) * 2, height)
        return [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
    if case == "dance_zoom":  # closer: the person larger, cut below the knees, a narrower view
        x0, x1 = int(0.15 * width), int(0.85 * width)
        y0, y1 = int(0.04 * height), int(0.78 * height)
        return [np.ascontiguousarray(f[y0:y1, x0:x1]) for f in frames]
    return frames


def _write_png(path: Path, rgb: np.ndarray, alpha: np.ndarray | None = None) -> None:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if alpha is not None:
        bgr = np.dstack([bgr, alpha])
    cv2.imwrite(str(path), bgr)


def _make_inputs(case: str, frames: int, tmp: Path) -> tuple[Path, Path, str]:
    """(reference image, driving video, kind) for a case, written under tmp."""
    from animate.media import load_image, write_video

    if case in SELF_CASES:
        source = TALKING if case == "talking" else DANCE
        clip, fps = _decode(source, frames, SIDE_START if case in ("dance_turned", "dance_narrow") else 0)
        clip = _transform_clip(case, clip)
        if clip[0].shape[0] % 2 or clip[0].shape[1] % 2:
            clip = [np.ascontiguousarray(f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2]) for f in clip]
        reference = tmp / f"{case}_reference.png"
        _write_png(reference, clip[0])
        driving = tmp / f"{case}_driving.mp4"
        write_video(driving, iter(clip), fps, crf=10, preset="veryfast")
        return reference, driving, "self"
    name = {
        "woman_dance": "woman_street_mimicmotion.jpg",
        "anime_dance": "anime_girl_musepose.png",
        "hero_dance": "hero_rgba_animateanyone.png",
        "anime_half_dance": "anime_girl_musepose.png",
    }[case]
    reference = REFERENCES / name
    if case == "anime_half_dance":
        # A drawn half-body character on a transparent background, cut at the thighs.
        from animate.pose import MediaPipeEstimator

        image = load_image(reference)
        with MediaPipeEstimator(static=True, whole_body=False, segmentation=True) as estimator:
            pose = estimator.detect(image.rgb)[0]
        cut = _thigh_y(pose.keypoints)
        alpha = np.where(pose.mask[:cut] > 127, 255, 0).astype(np.uint8)
        alpha = cv2.morphologyEx(alpha, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        reference = tmp / f"{case}_reference.png"
        _write_png(reference, image.rgb[:cut], alpha)
    return reference, DANCE, "cross"


def output_size(reference: Path, long_side: int) -> tuple[int, int]:
    from animate.media import load_image

    image = load_image(reference)
    scale = long_side / max(image.width, image.height)
    return (
        max(64, round(image.width * scale / 2) * 2),
        max(64, round(image.height * scale / 2) * 2),
    )


# ---------------------------------------------------------------- analysis


@dataclass
class Analysis:
    keypoints: np.ndarray  # (T, 17, 3)
    masks: np.ndarray  # (T, H, W) bool person
    faces: np.ndarray  # (T,) bool, a face found in the head crop (crops from `boxes`)


class FaceDetector:
    def __init__(self) -> None:
        try:
            import dlib

            self._dlib = dlib.get_frontal_face_detector()
            self.name = "dlib HOG"
        except ImportError:
            import mediapipe as mp

            self._dlib = None
            self._mp = mp.solutions.face_detection.FaceDetection(
                model_selection=0, min_detection_confidence=0.5
            )
            self.name = "MediaPipe face detection"

    def found(self, crop: np.ndarray) -> bool:
        if self._dlib is not None:
            return len(self._dlib(crop, 0)) > 0
        return self._mp.process(crop).detections is not None


def head_boxes(keypoints: np.ndarray) -> list[tuple[int, int, int] | None]:
    """Per frame a square (cx, cy, side) around the head, from nose, eyes, ears and shoulders."""
    boxes: list[tuple[int, int, int] | None] = []
    for kp in keypoints:
        head = kp[:5]
        seen = head[:, 2] >= KP_SCORE
        if seen.sum() < 2:
            boxes.append(None)
            continue
        centre = head[seen, :2].mean(0)
        spread = float(np.ptp(head[seen, 0])) if seen.sum() > 1 else 0.0
        shoulders = kp[[5, 6]]
        width = float(abs(shoulders[0, 0] - shoulders[1, 0])) if (shoulders[:, 2] >= KP_SCORE).all() else 0.0
        side = max(2.6 * spread, 0.8 * width, 24.0)
        boxes.append((int(centre[0]), int(centre[1]), int(side)))
    return boxes


def crop_square(frame: np.ndarray, box: tuple[int, int, int], size: int = 160) -> np.ndarray:
    cx, cy, side = box
    half = max(side // 2, 4)
    cx = min(max(cx, 0), frame.shape[1] - 1)
    cy = min(max(cy, 0), frame.shape[0] - 1)
    padded = cv2.copyMakeBorder(frame, half, half, half, half, cv2.BORDER_CONSTANT)
    crop = padded[cy : cy + 2 * half, cx : cx + 2 * half]
    return cv2.resize(
        crop, (size, size), interpolation=cv2.INTER_AREA if 2 * half > size else cv2.INTER_CUBIC
    )


def analyse(frames: list[np.ndarray], faces: FaceDetector, boxes=None) -> tuple[Analysis, list]:
    """MediaPipe body keypoints and person masks of a sequence (tracking, fresh graph), and faces in the
    head crops (``boxes``; default: this sequence's own head boxes)."""
    from animate.pose import MediaPipeEstimator

    kps, masks = [], []
    with MediaPipeEstimator(static=False, whole_body=False, segmentation=True) as estimator:
        for frame in frames:
            people = estimator.detect(frame)
            if people:
                kps.append(people[0].keypoints[:17])
                mask = people[0].mask
                masks.append(mask > 127 if mask is not None else np.zeros(frame.shape[:2], bool))
            else:
                kps.append(np.zeros((17, 3), np.float32))
                masks.append(np.zeros(frame.shape[:2], bool))
    keypoints = np.stack(kps)
    boxes = head_boxes(keypoints) if boxes is None else boxes
    found = np.array(
        [box is not None and faces.found(crop_square(f, box)) for f, box in zip(frames, boxes, strict=True)]
    )
    return Analysis(keypoints, np.stack(masks), found), boxes


def person_heights(masks: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    heights = []
    for mask, kp in zip(masks, keypoints, strict=True):
        rows = np.flatnonzero(mask.any(1))
        if len(rows) > 10:
            heights.append(float(rows[-1] - rows[0] + 1))
        else:
            seen = kp[kp[:, 2] >= KP_SCORE]
            heights.append(float(np.ptp(seen[:, 1])) if len(seen) > 1 else float(mask.shape[0]))
    return np.maximum(np.array(heights), 1.0)


def seen_in_frame(keypoints: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, 17) keypoints MediaPipe sees (visibility) inside the frame (it also guesses cut-off legs)."""
    width, height = size
    x, y = keypoints[..., 0], keypoints[..., 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return (keypoints[..., 2] >= KP_SCORE) & inside


def keypoint_scores(out: Analysis, drv: Analysis) -> dict[str, float]:
    heights = person_heights(drv.masks, drv.keypoints)
    size = drv.masks.shape[2], drv.masks.shape[1]
    both = seen_in_frame(out.keypoints, size) & seen_in_frame(drv.keypoints, size)
    dist = np.linalg.norm(out.keypoints[..., :2] - drv.keypoints[..., :2], axis=-1) / heights[:, None]
    result = {"pck05": float("nan"), "pck10": float("nan"), "kp_error": float("nan")}
    if both.any():
        d = dist[both]
        result = {
            "pck05": float(np.mean(d < 0.05)),
            "pck10": float(np.mean(d < 0.1)),
            "kp_error": float(d.mean()),
        }
    errors, limbs = [], {}
    for name, (a, b) in zip(LIMB_NAMES, LIMBS, strict=True):
        seen = both[:, a] & both[:, b]
        if not seen.any():
            continue
        vo = out.keypoints[seen, b, :2] - out.keypoints[seen, a, :2]
        vd = drv.keypoints[seen, b, :2] - drv.keypoints[seen, a, :2]
        diff = np.arctan2(vo[:, 1], vo[:, 0]) - np.arctan2(vd[:, 1], vd[:, 0])
        errors.append(np.degrees(np.abs(np.arctan2(np.sin(diff), np.cos(diff)))))
        limbs[name] = round(float(errors[-1].mean()), 1)
    result["limb_angle"] = float(np.concatenate(errors).mean()) if errors else float("nan")
    result["limbs"] = limbs
    return result


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM per pixel of two uint8 grey images (Gaussian window, sigma 1.5, the usual constants)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma * ma, blur(b * b) - mb * mb, blur(a * b) - ma * mb
    return ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))


def masked_psnr_ssim(
    outputs: list[np.ndarray], driving: list[np.ndarray], masks: np.ndarray
) -> tuple[float, float]:
    psnrs, ssims = [], []
    for out, drv, mask in zip(outputs, driving, masks, strict=True):
        if mask.sum() < 50:
            continue
        err = (out.astype(np.float64) - drv.astype(np.float64))[mask]
        mse = max(float(np.mean(err**2)), 1e-6)
        psnrs.append(10.0 * np.log10(255.0**2 / mse))
        grey = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (out, drv)]
        ssims.append(float(ssim_map(*grey)[mask].mean()))
    return (float(np.mean(psnrs)), float(np.mean(ssims))) if psnrs else (float("nan"), float("nan"))


def _psnr(errors: list[np.ndarray]) -> float:
    errors = [e for e in errors if e.size]
    if not errors:
        return float("nan")
    mse = max(float(np.mean(np.concatenate(errors) ** 2)), 1e-6)
    return 10.0 * np.log10(255.0**2 / mse)


def background_psnr(
    outputs: list[np.ndarray], driving: list[np.ndarray], drv: Analysis, out: Analysis
) -> float:
    """PSNR where the reference (frame 0) person stood and neither frame shows a person."""
    height = float(person_heights(drv.masks[:1], drv.keypoints[:1])[0])
    grow = max(3, round(0.02 * height)) * 2 + 1
    kernel = np.ones((grow, grow), np.uint8)
    stood = cv2.dilate(drv.masks[0].astype(np.uint8), kernel) > 0
    errors = []
    for t in range(1, len(outputs)):
        people = cv2.dilate((drv.masks[t] | out.masks[t]).astype(np.uint8), kernel) > 0
        region = stood & ~people
        errors.append((outputs[t].astype(np.float64) - driving[t].astype(np.float64))[region].ravel())
    return _psnr(errors)


def hand_psnr(outputs: list[np.ndarray], driving: list[np.ndarray], drv: Analysis) -> float:
    """PSNR inside a disc on each seen driving hand (past the wrist, COCO 9, 10, along the forearm)."""
    heights = person_heights(drv.masks, drv.keypoints)
    size = drv.masks.shape[2], drv.masks.shape[1]
    seen = seen_in_frame(drv.keypoints, size)
    errors = []
    for t, (output, frame) in enumerate(zip(outputs, driving, strict=True)):
        disc = np.zeros(frame.shape[:2], np.uint8)
        for elbow, wrist in ((7, 9), (8, 10)):
            if seen[t, elbow] and seen[t, wrist]:
                a, b = drv.keypoints[t, elbow, :2], drv.keypoints[t, wrist, :2]
                x, y = np.rint(b + 0.4 * (b - a)).astype(int)
                cv2.circle(disc, (int(x), int(y)), max(3, round(0.05 * heights[t])), 1, -1)
        region = disc > 0
        errors.append((output.astype(np.float64) - frame.astype(np.float64))[region].ravel())
    return _psnr(errors)


def area_ratio(out_masks: np.ndarray, drv_masks: np.ndarray) -> float:
    """Mean over frames of the output person's mask area over the driving person's."""
    areas = drv_masks.sum((1, 2)).astype(np.float64)
    keep = areas >= 50
    if not keep.any():
        return float("nan")
    return float(np.mean(out_masks[keep].sum((1, 2)) / areas[keep]))


#: Segments whose silhouette width is measured (keypoints averaged at each end): the 8 limb segments and
#: the torso (the shoulders' middle to the hips').
WIDTH_SEGMENTS = (*(((a,), (b,)) for a, b in LIMBS), ((5, 6), (11, 12)))


def segment_width(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Width (pixels) of the mask across the segment a -> b at its middle: the run of mask pixels along
    the perpendicular through the middle that holds it (nan when the middle is off the mask)."""
    direction = b - a
    length = float(np.linalg.norm(direction))
    if length < 2:
        return float("nan")
    normal = np.array([-direction[1], direction[0]]) / length
    from animate.body.girth import run_width  # the rule the engine's girth fit measures with

    return run_width(mask, 0.5 * (a + b), normal, limit=mask.shape[0])


def width_ratios(out: Analysis, drv: Analysis) -> dict[str, float]:
    """Per segment (limbs and torso), the median over frames of the output's silhouette width over the
    driving one's (see segment_width)."""
    size = drv.masks.shape[2], drv.masks.shape[1]
    seen = seen_in_frame(out.keypoints, size) & seen_in_frame(drv.keypoints, size)
    result = {}
    for name, (first, second) in zip((*LIMB_NAMES, "torso"), WIDTH_SEGMENTS, strict=True):
        ratios = []
        for t in np.flatnonzero(seen[:, list(first + second)].all(1)):
            o, d = out.keypoints[t, :, :2], drv.keypoints[t, :, :2]
            w_out = segment_width(out.masks[t], o[list(first)].mean(0), o[list(second)].mean(0))
            w_drv = segment_width(drv.masks[t], d[list(first)].mean(0), d[list(second)].mean(0))
            if np.isfinite(w_out) and np.isfinite(w_drv) and w_drv > 0:
                ratios.append(w_out / w_drv)
        if ratios:
            result[name] = round(float(np.median(ratios)), 2)
    return result


def change(frames: list[np.ndarray]) -> float:
    if len(frames) < 2:
        return float("nan")
    return float(
        np.mean(
            [np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() for a, b in itertools.pairwise(frames)]
        )
    )


class PeakRSS:
    """The process's peak resident memory (MB) while the block runs, sampled every 50 ms."""

    def __enter__(self) -> PeakRSS:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    self.peak = max(self.peak, int(line.split()[1]) / 1024.0)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# ---------------------------------------------------------------- one case


def render_case(animator, reference: Path, driving: Path, size, frames: int, method: str):
    """(output frames, seconds, motion, notes)."""
    from animate.animator import AnimationOptions

    options = AnimationOptions(
        engine="warp", size=size, max_frames=frames, body=method != "no-body", audio=False
    )
    start = time.perf_counter()
    prepared = animator.prepare(reference, driving, options)
    bundle = prepared.bundle
    if method == "static":
        outputs = [bundle.reference.copy() for _ in range(bundle.num_frames)]
    else:
        outputs = list(prepared.engine.render(bundle))
    seconds = time.perf_counter() - start
    motion = getattr(prepared.engine, "motion", None) or ("body" if bundle.body is not None else "skeleton")
    return outputs, seconds, motion, list(prepared.notes)


def side_by_side(reference: np.ndarray, driving: np.ndarray, output: np.ndarray) -> np.ndarray:
    height = output.shape[0]

    def fit(img: np.ndarray) -> np.ndarray:
        scale = height / img.shape[0]
        return cv2.resize(img, (max(1, round(img.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)

    gap = np.full((height, 4, 3), 255, np.uint8)
    return np.concatenate([fit(reference), gap, fit(driving), gap, output], axis=1)


def run_case(case: str, args, animator, faces: FaceDetector, tmp: Path) -> CaseResult:
    from animate.media import load_image, open_video

    reference, driving, kind = _make_inputs(case, args.frames, tmp)
    size = output_size(reference, args.size)
    with PeakRSS() as rss:
        outputs, seconds, motion, notes = render_case(
            animator, reference, driving, size, args.frames, args.method
        )
    with open_video(driving) as video:
        drv_frames = list(video.frames(max_frames=len(outputs), size=size))
    n = min(len(outputs), len(drv_frames))
    outputs, drv_frames = outputs[:n], drv_frames[:n]
    drv, boxes = analyse(drv_frames, faces)
    out, _ = analyse(outputs, faces, boxes if kind == "self" else None)
    result = CaseResult(case, kind, n, size, motion, notes=notes)
    for key, value in keypoint_scores(out, drv).items():
        # Another person's proportions: only the limbs' directions can match the driving video.
        if kind == "self" or key in ("limb_angle", "limbs"):
            setattr(result, key, value)
    if kind == "self":
        result.psnr, result.ssim = masked_psnr_ssim(outputs, drv_frames, drv.masks)
        result.bg_psnr = background_psnr(outputs, drv_frames, drv, out)
        result.hand_psnr = hand_psnr(outputs, drv_frames, drv)
        result.area = area_ratio(out.masks, drv.masks)
        result.widths = width_ratios(out, drv)
        result.width = float(np.mean(list(result.widths.values()))) if result.widths else float("nan")
        has_face = drv.faces
        result.face = float(out.faces[has_face].mean()) if has_face.any() else float("nan")
    else:
        # Drawn faces may escape the detector: score only a reference whose face it finds.
        still = cv2.resize(load_image(reference).rgb, size, interpolation=cv2.INTER_AREA)
        if analyse([still], faces)[0].faces.all():
            result.face = float(out.faces.mean())
    real = change(drv_frames)
    result.change = change(outputs) / real if real > 0 else float("nan")
    result.fps = n / seconds
    result.rss_mb = rss.peak
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        ref = load_image(reference).rgb
        for t in np.linspace(0, n - 1, 4).round().astype(int):
            strip = side_by_side(ref, drv_frames[t], outputs[t])
            _write_png(args.out / f"{case}_{t:03d}.png", strip)
    return result


# ---------------------------------------------------------------- table


COLUMNS = (
    ("case", "case", "{}"),
    ("motion", "path", "{}"),
    ("pck05", "PCK@.05", "{:.3f}"),
    ("pck10", "PCK@.1", "{:.3f}"),
    ("kp_error", "kp err", "{:.3f}"),
    ("limb_angle", "limb deg", "{:.1f}"),
    ("psnr", "mPSNR", "{:.2f}"),
    ("ssim", "mSSIM", "{:.3f}"),
    ("face", "face", "{:.2f}"),
    ("bg_psnr", "bgPSNR", "{:.2f}"),
    ("hand_psnr", "hPSNR", "{:.2f}"),
    ("area", "area", "{:.2f}"),
    ("width", "width", "{:.2f}"),
    ("change", "change", "{:.2f}"),
    ("fps", "fps", "{:.2f}"),
    ("rss_mb", "RSS MB", "{:.0f}"),
)


def _cell(fmt: str, value) -> str:
    if isinstance(value, float) and not np.isfinite(value):
        return "-"
    return fmt.format(value)


def mean_row(results: list[CaseResult], label: str) -> dict:
    row: dict = {"case": label, "motion": ""}
    for key, _, _ in COLUMNS[2:]:
        values = [getattr(r, key) for r in results if np.isfinite(getattr(r, key))]
        row[key] = float(np.mean(values)) if values else float("nan")
    return row


def print_table(results: list[CaseResult], args, face_name: str) -> None:
    print(
        f"\nwarp quality ({args.method}): {args.frames} frames, long side {args.size}, face detector: {face_name}, "
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print("| " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    print("|" + "|".join("---" for _ in COLUMNS) + "|")
    rows = [asdict(r) for r in results]
    for kind, label in (("self", "mean self"), ("cross", "mean cross")):
        group = [r for r in results if r.kind == kind]
        if group:
            rows.append(mean_row(group, label))
    for row in rows:
        print("| " + " | ".join(_cell(fmt, row[key]) for key, _, fmt in COLUMNS) + " |")
    for r in results:
        if r.limbs:
            print(f"limbs {r.case}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.limbs.items()))
        if r.widths:
            print(f"widths {r.case}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.widths.items()))
        for note in r.notes:
            print(f"note {r.case}: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=512, help="output long side (the issue's: 1024)")
    parser.add_argument(
        "--cases", default=",".join(ALL_CASES), help=f"comma-separated of {', '.join(ALL_CASES)}"
    )
    parser.add_argument("--method", choices=("warp", "no-body", "static"), default="warp")
    parser.add_argument("--out", type=Path, default=None, help="directory for side-by-side PNGs")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(ALL_CASES))
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)}")
    from animate.animator import Animator

    animator = Animator()
    faces = FaceDetector()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            start = time.perf_counter()
            result = run_case(case, args, animator, faces, Path(tmp))
            results.append(result)
            print(
                f"{case}: {result.motion}, PCK@.05 {result.pck05:.3f}, limb {result.limb_angle:.1f} deg, "
                f"mPSNR {result.psnr:.2f}, face {result.face:.2f} ({time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    print_table(results, args, faces.name)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        groups = {k: mean_row([r for r in results if r.kind == k], k) for k in ("self", "cross")}
        payload = {
            "method": args.method,
            "frames": args.frames,
            "size": args.size,
            "face_detector": faces.name,
            "cpus": os.cpu_count(),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "cases": [asdict(r) for r in results],
            "means": groups,
        }
        args.json.write_text(json.dumps(payload, indent=1, default=float, allow_nan=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
