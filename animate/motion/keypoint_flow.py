"""Keypoint-driven motion in DisPose's input formats: sparse motion (CMP) and blurred trajectory flow.

Flows are (T, H, W, 2) float32 in pixels of the output size, x then y; masks are (T, H, W) float32.
All keypoint arrays are (T, K, 3): x, y in output pixels and a confidence score.

Two sets of rules: ours (``sparse_motion``, ``trajectory_flow``) and DisPose's, measured against its
``mimicmotion/utils/utils.py`` (``dispose_sparse_motion``, ``dispose_trajectory_flow``): the ControlNet in
DisPose.pth was trained on the latter. ``unseen="zeros"`` reproduces upstream's handling of unseen keypoints
(their position read as (0, 0)), a defect kept only for the ``dispose`` preset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from animate.motion.bundle import GuidanceConventions

# DisPose blurs trajectories with a 199-tap Gaussian, sigma 20, at 1024 px on the long side.
TRAJECTORY_SIGMA_AT_1024 = 20.0
TRAJECTORY_KERNEL_AT_1024 = 199
#: DisPose's trajectory kernel (``bivariate_Gaussian(199, 20, 20, 0)``): fixed, whatever the image size.
DISPOSE_KERNEL_SIZE, DISPOSE_KERNEL_SIGMA = 199, 20.0
#: CMP's square input grid in DisPose (``sample_inputs_flow``).
CMP_SIDE = 384
UNSEEN_RULES = ("skip", "zeros")


def seen(scores: np.ndarray, threshold: float = 0.3, strict: bool = False) -> np.ndarray:
    """Which keypoints count as seen: score >= threshold (ours) or > threshold (``strict``: DWPose's)."""
    return scores > threshold if strict else scores >= threshold


def _pixel(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack(
        [np.clip(np.rint(xy[..., 0]), 0, width - 1), np.clip(np.rint(xy[..., 1]), 0, height - 1)], -1
    ).astype(np.int64)


def sparse_motion(
    reference: np.ndarray,
    frames: np.ndarray,
    size: tuple[int, int],
    threshold: float = 0.3,
    *,
    strict: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, each keypoint's displacement from the reference, written at its reference position.

    reference: (K, 3) reference keypoints; frames: (T, K, 3). Returns (flow (T, H, W, 2), mask (T, H, W)):
    the mask is 1 where a keypoint visible in both the reference and the frame wrote its displacement.
    """
    width, height = size
    frames = np.asarray(frames, np.float32)
    flow = np.zeros((len(frames), height, width, 2), np.float32)
    mask = np.zeros((len(frames), height, width), np.float32)
    ref_seen = seen(reference[:, 2], threshold, strict)
    ref_px = _pixel(reference[:, :2], width, height)
    for t, keypoints in enumerate(frames):
        both = ref_seen & seen(keypoints[:, 2], threshold, strict)
        if not both.any():
            continue
        xs, ys = ref_px[both, 0], ref_px[both, 1]
        flow[t, ys, xs] = keypoints[both, :2] - reference[both, :2]
        mask[t, ys, xs] = 1.0
    return flow, mask


def trajectory_sigma(size: tuple[int, int]) -> float:
    """DisPose's blur, scaled from its 1024 px long side to ``size``."""
    return TRAJECTORY_SIGMA_AT_1024 * max(size) / 1024.0


def trajectory_flow(
    frames: np.ndarray,
    size: tuple[int, int],
    threshold: float = 0.3,
    sigma: float | None = None,
    downsample: int = 4,
    *,
    strict: bool = False,
) -> np.ndarray:
    """Frame-to-frame keypoint displacement written at the keypoint and Gaussian-blurred.

    Frame 0 has zero flow. The blur is truncated where DisPose's kernel ends and normalised by the blurred
    point density, so the strongest keypoint keeps its full displacement at its centre. A Gaussian this
    wide is smooth, so it is computed at 1/``downsample`` resolution and upsampled (bilinear).
    """
    width, height = size
    frames = np.asarray(frames, np.float32)
    sigma = trajectory_sigma(size) if sigma is None else sigma
    factor = max(1, min(downsample, int(sigma // 2)))
    small_w, small_h = max(1, -(-width // factor)), max(1, -(-height // factor))
    truncate = (TRAJECTORY_KERNEL_AT_1024 // 2) / TRAJECTORY_SIGMA_AT_1024
    out = np.zeros((len(frames), height, width, 2), np.float32)
    for t in range(1, len(frames)):
        prev, cur = frames[t - 1], frames[t]
        both = seen(prev[:, 2], threshold, strict) & seen(cur[:, 2], threshold, strict)
        if not both.any():
            continue
        # the small cell holding the point's full-size pixel (cell k spans pixels k * factor .. + factor - 1)
        px = _pixel((cur[both, :2] + 0.5) / factor - 0.5, small_w, small_h)
        planes = np.zeros((3, small_h, small_w), np.float32)
        delta = cur[both, :2] - prev[both, :2]
        np.add.at(planes[0], (px[:, 1], px[:, 0]), delta[:, 0])
        np.add.at(planes[1], (px[:, 1], px[:, 0]), delta[:, 1])
        np.add.at(planes[2], (px[:, 1], px[:, 0]), 1.0)
        s = sigma / factor
        blurred = ndimage.gaussian_filter(planes, sigma=(0, s, s), mode="constant", truncate=truncate)
        density = blurred[2]
        peak = density.max()
        if peak <= 0:
            continue
        # Weight by density, normalised so the strongest point keeps its full displacement.
        scale = (density / peak) / np.maximum(density, 1e-12)
        small = np.stack([blurred[0] * scale, blurred[1] * scale], -1)
        if factor > 1:
            small = cv2.resize(small, (small_w * factor, small_h * factor), interpolation=cv2.INTER_LINEAR)
        out[t] = small[:height, :width]
    return out


def dispose_kernel() -> np.ndarray:
    """The 1-D factor of DisPose's trajectory kernel: ``np.outer(k, k)`` is the unit-sum 199 x 199 Gaussian."""
    half = DISPOSE_KERNEL_SIZE // 2
    taps = np.exp(-0.5 * (np.arange(-half, half + 1, dtype=np.float64) / DISPOSE_KERNEL_SIGMA) ** 2)
    return taps / taps.sum()


def _track(
    reference: np.ndarray, frames: np.ndarray, size: tuple[int, int], threshold: float, strict: bool
) -> tuple[np.ndarray, np.ndarray]:
    """DisPose's ``pose2track``: (positions (1 + T, K, 2) float64 clamped into the image, zero where unseen;
    seen (1 + T, K)), the reference first."""
    width, height = size
    scores = np.concatenate([np.asarray(reference)[None, :, 2], np.asarray(frames)[..., 2]])
    visible = seen(scores, threshold, strict)  # in the scores' own precision, as DWPose compares them
    points = np.concatenate([np.asarray(reference, np.float64)[None], np.asarray(frames, np.float64)])
    xy = np.stack([np.clip(points[..., 0], 0, width - 1), np.clip(points[..., 1], 0, height - 1)], -1)
    return np.where(visible[..., None], xy, 0.0), visible


def _check_unseen(unseen: str) -> None:
    if unseen not in UNSEEN_RULES:
        raise ValueError(f"unseen must be one of {UNSEEN_RULES}, got {unseen!r}")


def dispose_trajectory_flow(
    reference: np.ndarray,
    frames: np.ndarray,
    size: tuple[int, int],
    threshold: float = 0.3,
    *,
    strict: bool = False,
    unseen: str = "skip",
) -> np.ndarray:
    """DisPose's trajectory flow (``points_to_flows`` + its blur): ``(T, H, W, 2)`` float32, ``flow[t]``
    the step into frame t from frame t - 1 (from the reference for t = 0).

    Each keypoint seen at a step's start writes ``end - start`` at pixel ``int(start)`` (positions clamped
    into the image; a later keypoint overwrites an earlier one on the same pixel). Each map is then blurred at
    full resolution with the fixed 199-tap, sigma-20, unit-sum Gaussian, borders reflected without repeating
    the edge (OpenCV's reflect-101, as ``cv2.filter2D``). ``unseen="skip"`` writes a step only when its end
    is seen too; ``"zeros"`` (upstream) reads an unseen end as (0, 0), so the step writes minus the start.
    """
    _check_unseen(unseen)
    width, height = size
    positions, visible = _track(reference, frames, size, threshold, strict)
    kernel = dispose_kernel()[None]
    out = np.zeros((len(positions) - 1, height, width, 2), np.float32)
    for t in range(len(out)):
        start, end = positions[t], positions[t + 1]
        write = visible[t] if unseen == "zeros" else visible[t] & visible[t + 1]
        drag: dict[tuple[int, int], np.ndarray] = {}
        for k in np.flatnonzero(write):
            drag[int(start[k, 0]), int(start[k, 1])] = end[k] - start[k]
        if not drag:
            continue
        # The kernel is separable and the map holds a few points: each blurs to an outer product.
        xs, ys = np.array(list(drag)).T
        deltas = np.array(list(drag.values()))
        columns, rows = _blur_1d(ys, height, kernel), _blur_1d(xs, width, kernel)
        out[t] = np.stack([(columns.T * deltas[:, c]) @ rows for c in range(2)], -1)
    return out


def _blur_1d(indices: np.ndarray, length: int, kernel: np.ndarray) -> np.ndarray:
    """Row i: the blur of a unit impulse at ``indices[i]`` along an axis of ``length``, reflect-101 borders."""
    impulses = np.zeros((len(indices), length), np.float64)
    impulses[np.arange(len(indices)), indices] = 1.0
    return cv2.filter2D(impulses, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def dispose_sparse_motion(
    reference: np.ndarray,
    frames: np.ndarray,
    size: tuple[int, int],
    threshold: float = 0.3,
    *,
    strict: bool = False,
    unseen: str = "skip",
    side: int = CMP_SIDE,
) -> tuple[np.ndarray, np.ndarray]:
    """DisPose's CMP input on CMP's ``side`` x ``side`` grid (``sample_inputs_flow``): per frame, each
    keypoint's displacement from the reference in grid pixels, written at ``int(x * side / W)``,
    ``int(y * side / H)`` of its reference position (the unrounded, clamped coordinate). Returns (flow
    ``(T, side, side, 2)``, mask ``(T, side, side)``).

    ``unseen="skip"`` writes keypoints seen in both; ``"zeros"`` (upstream) writes all of them with unseen
    positions read as (0, 0): minus the reference position, or a vector at the grid's pixel (0, 0).
    """
    _check_unseen(unseen)
    width, height = size
    positions, visible = _track(reference, frames, size, threshold, strict)
    grid = positions / np.array([width, height]) * side  # upstream's order of operations: x / W * 384
    cell = np.clip(grid[0].astype(np.int64), 0, side - 1)
    flow = np.zeros((len(positions) - 1, side, side, 2), np.float32)
    mask = np.zeros((len(positions) - 1, side, side), np.float32)
    for k in range(grid.shape[1]):  # in keypoint order: a later keypoint overwrites an earlier one
        frames_k = np.arange(len(flow))
        if unseen == "skip":
            frames_k = frames_k[visible[0, k] & visible[1:, k]]
        x, y = cell[k]
        flow[frames_k, y, x] = grid[1 + frames_k, k] - grid[0, k]
        mask[frames_k, y, x] = 1.0
    return flow, mask


def keypoint_set(keypoints: np.ndarray, name: str) -> np.ndarray:
    """``(..., 133, 3)`` whole-body keypoints as the named set: ``"wholebody"`` as they are, ``"openpose18"``
    the 18 OpenPose body points DisPose tracks (``animate.pose.layout.openpose18``)."""
    if name == "wholebody":
        return keypoints
    from animate.pose.layout import openpose18

    flat = np.asarray(keypoints).reshape(-1, *keypoints.shape[-2:])
    return np.stack([openpose18(k) for k in flat]).reshape(*keypoints.shape[:-2], 18, 3)


def conventional_trajectory(
    reference: np.ndarray, frames: np.ndarray, size: tuple[int, int], rules: GuidanceConventions
) -> np.ndarray:
    """The trajectory flow of whole-body keypoints under ``rules`` (keypoint set, trajectory, seen, unseen)."""
    reference, frames = keypoint_set(reference, rules.keypoints), keypoint_set(frames, rules.keypoints)
    strict = rules.seen == "above"
    if rules.trajectory == "dispose":
        return dispose_trajectory_flow(reference, frames, size, strict=strict, unseen=rules.unseen)
    return trajectory_flow(frames, size, strict=strict)


def conventional_sparse_motion(
    reference: np.ndarray, frames: np.ndarray, size: tuple[int, int], rules: GuidanceConventions
) -> tuple[np.ndarray, np.ndarray]:
    """CMP's sparse input from whole-body keypoints under ``rules``: at the output size (``cmp_io="resample"``)
    or on CMP's grid (``"dispose"``), as ``animate.motion.cmp.cmp_dense_flow`` takes it for that rule."""
    reference, frames = keypoint_set(reference, rules.keypoints), keypoint_set(frames, rules.keypoints)
    strict = rules.seen == "above"
    if rules.cmp_io == "dispose":
        return dispose_sparse_motion(reference, frames, size, strict=strict, unseen=rules.unseen)
    return sparse_motion(reference, frames, size, strict=strict)
