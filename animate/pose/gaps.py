"""Short gaps, filled: a frame or a keypoint missing for a moment is interpolated from its neighbours.

Long gaps stay missing (score 0): a hand behind the back is not invented. Interpolated keypoints get the
lower of the two bounding scores, so downstream code still sees that they were not measured.
"""

from __future__ import annotations

import numpy as np


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D boolean array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def fill_gaps(
    keypoints: np.ndarray, detected: np.ndarray, max_gap: int, threshold: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate missing frames and keypoints in runs of at most ``max_gap`` frames.

    keypoints: (T, K, 3) x, y, score; detected: (T,) bool. Returns new arrays; inputs are untouched.
    """
    kp = keypoints.astype(np.float32, copy=True)
    det = detected.astype(bool, copy=True)
    kp[~det, :, 2] = 0.0
    length = len(det)
    for start, end in _runs(~det):
        if start > 0 and end < length and end - start <= max_gap:
            det[start:end] = True
    seen = kp[:, :, 2] >= threshold
    for k in range(kp.shape[1]):
        for start, end in _runs(~seen[:, k]):
            if start == 0 or end == length or end - start > max_gap or not det[start:end].all():
                continue
            a, b = kp[start - 1, k], kp[end, k]
            w = (np.arange(start, end) - (start - 1))[:, None] / float(end - (start - 1))
            kp[start:end, k, :2] = (1.0 - w) * a[:2] + w * b[:2]
            kp[start:end, k, 2] = min(a[2], b[2])
    # A filled frame whose body could not be interpolated (missing longer than the frame) stays missing.
    det &= detected | (kp[:, :23, 2] >= threshold).any(axis=1)
    return kp, det
