"""Keypoint-driven motion in DisPose's input formats: sparse motion (CMP) and blurred trajectory flow.

Flows are (T, H, W, 2) float32 in pixels of the output size, x then y; masks are (T, H, W) float32.
All keypoint arrays are (T, K, 3): x, y in output pixels and a confidence score.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

# DisPose blurs trajectories with a 199-tap Gaussian, sigma 20, at 1024 px on the long side.
TRAJECTORY_SIGMA_AT_1024 = 20.0
TRAJECTORY_KERNEL_AT_1024 = 199


def _pixel(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack(
        [np.clip(np.rint(xy[..., 0]), 0, width - 1), np.clip(np.rint(xy[..., 1]), 0, height - 1)], -1
    ).astype(np.int64)


def sparse_motion(
    reference: np.ndarray,
    frames: np.ndarray,
    size: tuple[int, int],
    threshold: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, each keypoint's displacement from the reference, written at its reference position.

    reference: (K, 3) reference keypoints; frames: (T, K, 3). Returns (flow (T, H, W, 2), mask (T, H, W)):
    the mask is 1 where a keypoint visible in both the reference and the frame wrote its displacement.
    """
    width, height = size
    frames = np.asarray(frames, np.float32)
    flow = np.zeros((len(frames), height, width, 2), np.float32)
    mask = np.zeros((len(frames), height, width), np.float32)
    ref_seen = reference[:, 2] >= threshold
    ref_px = _pixel(reference[:, :2], width, height)
    for t, keypoints in enumerate(frames):
        seen = ref_seen & (keypoints[:, 2] >= threshold)
        if not seen.any():
            continue
        xs, ys = ref_px[seen, 0], ref_px[seen, 1]
        flow[t, ys, xs] = keypoints[seen, :2] - reference[seen, :2]
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
        seen = (prev[:, 2] >= threshold) & (cur[:, 2] >= threshold)
        if not seen.any():
            continue
        px = _pixel(cur[seen, :2] / factor, small_w, small_h)
        planes = np.zeros((3, small_h, small_w), np.float32)
        delta = cur[seen, :2] - prev[seen, :2]
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
