"""The one object an engine receives: everything derived from the reference and the driving video."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from animate.motion.body_field import BodyMotion


@dataclass
class GuidanceBundle:
    """Guidance for T output frames of ``size`` = (width, height), all in output pixels.

    Per-frame image stacks are optional: an engine that needs them (diffusion) has them filled in; the
    warp engine streams from ``body`` (or, without a body fit, from the keypoints), so memory stays flat
    for long videos.
    Images are uint8 RGB (T, H, W, 3); masks uint8 (.., H, W) with 0/255; flows float32 (T, H, W, 2) in
    pixels (x, y); keypoints float32 (T, 133, 3) COCO-WholeBody, retargeted onto the reference.
    ``dense_flow[t]`` moves reference pixels to frame t; ``trajectory_flow[t]`` is frame t-1 -> t.
    """

    reference: np.ndarray  # (H, W, 3) the reference image at the output size
    reference_mask: np.ndarray  # (H, W) the reference person
    reference_keypoints: np.ndarray  # (133, 3)
    keypoints: np.ndarray  # (T, 133, 3)
    fps: float
    size: tuple[int, int]
    pose_images: np.ndarray | None = None  # (T, H, W, 3) skeletons, DWPose convention
    depth: np.ndarray | None = None  # (T, H, W, 3)
    normal: np.ndarray | None = None  # (T, H, W, 3)
    semantic: np.ndarray | None = None  # (T, H, W, 3)
    mask: np.ndarray | None = None  # (T, H, W) the rendered target body
    dense_flow: np.ndarray | None = None  # (T, H, W, 2)
    trajectory_flow: np.ndarray | None = None  # (T, H, W, 2)
    sparse_flow: np.ndarray | None = None  # (T, H, W, 2) CMP input
    sparse_mask: np.ndarray | None = None  # (T, H, W)
    body: BodyMotion | None = None  # reference + transferred bodies in the output camera (None: no fit)
    extras: dict[str, object] = field(default_factory=dict)  # engine-specific data

    @property
    def num_frames(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    def validate(self) -> None:
        """Raise ValueError when an array disagrees with ``size`` or the frame count."""
        width, height = self.size
        t = self.num_frames
        expected = {
            "reference": (height, width, 3),
            "reference_mask": (height, width),
            "pose_images": (t, height, width, 3),
            "depth": (t, height, width, 3),
            "normal": (t, height, width, 3),
            "semantic": (t, height, width, 3),
            "mask": (t, height, width),
            "dense_flow": (t, height, width, 2),
            "trajectory_flow": (t, height, width, 2),
            "sparse_flow": (t, height, width, 2),
            "sparse_mask": (t, height, width),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"GuidanceBundle.{name} has shape {tuple(value.shape)}, expected {shape}")

    def save_npz(self, path: str | Path) -> Path:
        """All arrays in one compressed file (for debugging and for feeding an engine elsewhere)."""
        arrays = {k: v for k, v in vars(self).items() if isinstance(v, np.ndarray)}
        np.savez_compressed(path, fps=self.fps, size=np.array(self.size), **arrays)
        return Path(path)
