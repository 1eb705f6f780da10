"""Temporal smoothing: a confidence-aware One Euro filter on every keypoint coordinate.

One Euro (Casiez et al., CHI 2012) low-passes with a cutoff that rises with speed: slow jitter is removed,
fast motion is followed without lag. Confidence-aware: a low-score measurement moves the estimate less
(the smoothing factor is scaled by score ** confidence_power). Coordinates are measured in frame heights,
so the same settings work at any resolution. A keypoint that disappears restarts its filter on return.
Whole clips are filtered forwards and backwards and the two averaged (``bidirectional``): each pass lags
by about the same amount in opposite directions, so the average keeps the smoothing without the lag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SmoothingOptions:
    min_cutoff: float = 2.0  # Hz at rest: lower removes more jitter, adds more lag on slow motion
    beta: float = 5.0  # cutoff gain per (frame height / s) of speed: higher follows fast motion closer
    d_cutoff: float = 1.0  # Hz, for the speed estimate itself
    confidence_power: float = 1.0
    threshold: float = 0.3  # keypoints below this score are not filtered and reset the filter
    bidirectional: bool = True  # offline clips: average a forward and a backward pass (cancels the lag)


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def smooth_keypoints(
    keypoints: np.ndarray, fps: float, scale: float, options: SmoothingOptions | None = None
) -> np.ndarray:
    """Filter (T, K, 3) keypoints (x, y, score) recorded at ``fps``; ``scale`` is the frame height in px.

    Scores are returned unchanged; so are coordinates of keypoints below the threshold.
    """
    options = options or SmoothingOptions()
    forward = _one_euro(keypoints, fps, scale, options)
    if not options.bidirectional:
        return forward
    backward = _one_euro(keypoints[::-1], fps, scale, options)[::-1]
    out = forward.copy()
    out[:, :, :2] = (forward[:, :, :2] + backward[:, :, :2]) / 2.0
    return out


def _one_euro(keypoints: np.ndarray, fps: float, scale: float, options: SmoothingOptions) -> np.ndarray:
    out = keypoints.astype(np.float32, copy=True)
    if len(out) < 2 or fps <= 0:
        return out
    dt = 1.0 / fps
    unit = float(scale) if scale > 0 else 1.0
    count = out.shape[1]
    x_hat = np.zeros((count, 2), np.float64)
    dx_hat = np.zeros((count, 2), np.float64)
    alive = np.zeros(count, bool)
    a_d = _alpha(options.d_cutoff, dt)
    for t in range(len(out)):
        x = out[t, :, :2].astype(np.float64) / unit
        score = np.clip(out[t, :, 2].astype(np.float64), 0.0, 1.0)
        seen = score >= options.threshold
        restart = seen & ~alive
        x_hat[restart] = x[restart]
        dx_hat[restart] = 0.0
        step = seen & alive
        if step.any():
            dx = (x[step] - x_hat[step]) / dt
            dx_hat[step] = dx_hat[step] + a_d * (dx - dx_hat[step])
            speed = np.linalg.norm(dx_hat[step], axis=1, keepdims=True)
            a = _alpha(options.min_cutoff + options.beta * speed, dt)
            a = a * score[step, None] ** options.confidence_power
            x_hat[step] = x_hat[step] + a * (x[step] - x_hat[step])
            out[t, step, :2] = (x_hat[step] * unit).astype(np.float32)
        alive = seen
    return out
