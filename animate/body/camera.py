"""A pinhole camera at the origin looking down +z (OpenCV axes: x right, y down), in pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def default(cls, width: int, height: int, fov_factor: float = 1.0) -> Camera:
        """Focal length ``fov_factor * max(width, height)`` (about 53 degrees across the long side)."""
        f = fov_factor * max(width, height)
        return cls(width, height, f, f, width / 2.0, height / 2.0)

    def resized(self, width: int, height: int) -> Camera:
        """The same view at another resolution (the image is scaled, not cropped)."""
        sx, sy = width / self.width, height / self.height
        return Camera(width, height, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy)

    def cover(self, width: int, height: int) -> Camera:
        """The view that scales this image to cover ``width`` x ``height`` and crops the centre."""
        s = max(width / self.width, height / self.height)
        ox = (width - self.width * s) / 2.0
        oy = (height - self.height * s) / 2.0
        return Camera(width, height, self.fx * s, self.fy * s, self.cx * s + ox, self.cy * s + oy)

    def project(self, points: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """(..., 3) camera-space points -> (..., 2) pixels."""
        z = points[..., 2:3]
        z = z.clamp(min=1e-3) if torch.is_tensor(z) else np.maximum(z, 1e-3)
        xy = points[..., :2] / z
        f = xy.new_tensor([self.fx, self.fy]) if torch.is_tensor(xy) else np.array([self.fx, self.fy])
        c = xy.new_tensor([self.cx, self.cy]) if torch.is_tensor(xy) else np.array([self.cx, self.cy])
        return xy * f + c

    def to_json(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
        }

    @classmethod
    def from_json(cls, data: dict) -> Camera:
        return cls(
            int(data["width"]), int(data["height"]), *(float(data[k]) for k in ("fx", "fy", "cx", "cy"))
        )
