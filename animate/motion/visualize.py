"""Optical-flow colour coding (the standard colour wheel: hue = direction, saturation = magnitude)."""

from __future__ import annotations

import numpy as np

# Segment lengths of the colour wheel: red-yellow, yellow-green, green-cyan, cyan-blue, blue-magenta, magenta-red.
_SEGMENTS = (15, 6, 4, 11, 13, 6)


def color_wheel() -> np.ndarray:
    """(55, 3) float RGB in [0, 1], going around the hue circle with perceptually even steps."""
    ry, yg, gc, cb, bm, mr = _SEGMENTS
    ramps = [
        np.stack([np.ones(ry), np.arange(ry) / ry, np.zeros(ry)], 1),
        np.stack([1 - np.arange(yg) / yg, np.ones(yg), np.zeros(yg)], 1),
        np.stack([np.zeros(gc), np.ones(gc), np.arange(gc) / gc], 1),
        np.stack([np.zeros(cb), 1 - np.arange(cb) / cb, np.ones(cb)], 1),
        np.stack([np.arange(bm) / bm, np.zeros(bm), np.ones(bm)], 1),
        np.stack([np.ones(mr), np.zeros(mr), 1 - np.arange(mr) / mr], 1),
    ]
    return np.concatenate(ramps, 0)


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(H, W, 2) flow -> (H, W, 3) uint8. Zero motion is white; ``max_magnitude`` sets full saturation."""
    u, v = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)
    magnitude = np.hypot(u, v)
    scale = max_magnitude if max_magnitude is not None else max(float(magnitude.max()), 1e-6)
    radius = np.clip(magnitude / max(scale, 1e-6), 0, 1)
    wheel = color_wheel()
    n = len(wheel)
    angle = np.arctan2(-v, -u) / np.pi  # (-1, 1]
    position = (angle + 1) / 2 * (n - 1)
    lo = np.floor(position).astype(int)
    hi = (lo + 1) % n
    frac = (position - lo)[..., None]
    colour = (1 - frac) * wheel[lo] + frac * wheel[hi]
    colour = 1 - radius[..., None] * (1 - colour)
    return np.clip(colour * 255 + 0.5, 0, 255).astype(np.uint8)
