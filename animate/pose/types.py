"""Value types for estimated poses and their JSON form (the output of ``animate pose``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from animate.pose.errors import PoseError
from animate.pose.layout import BODY, NUM_KEYPOINTS, NUM_WORLD

SCHEMA_VERSION = 1
LAYOUT = "coco_wholebody_133"


@dataclass
class Pose:
    """One person in one frame.

    ``keypoints`` (133, 3) float32: x, y in pixels of the frame and a score in [0, 1] (0 = not seen).
    ``world`` (33, 4) float32: MediaPipe world landmarks x, y, z in metres and visibility, or None.
    ``mask`` (H, W) uint8 person segmentation 0..255, or None.
    """

    keypoints: np.ndarray
    world: np.ndarray | None = None
    mask: np.ndarray | None = None
    detected: bool = True

    def __post_init__(self) -> None:
        self.keypoints = np.asarray(self.keypoints, dtype=np.float32)
        if self.keypoints.shape != (NUM_KEYPOINTS, 3):
            raise ValueError(f"keypoints must be ({NUM_KEYPOINTS}, 3), got {self.keypoints.shape}")
        if self.world is not None:
            self.world = np.asarray(self.world, dtype=np.float32)
            if self.world.shape != (NUM_WORLD, 4):
                raise ValueError(f"world must be ({NUM_WORLD}, 4), got {self.world.shape}")

    @classmethod
    def empty(cls) -> Pose:
        return cls(np.zeros((NUM_KEYPOINTS, 3), np.float32), None, None, detected=False)

    @property
    def xy(self) -> np.ndarray:
        return self.keypoints[:, :2]

    @property
    def scores(self) -> np.ndarray:
        return self.keypoints[:, 2]

    def visible(self, threshold: float = 0.3) -> np.ndarray:
        """Boolean (133,) of keypoints seen with at least ``threshold`` confidence."""
        return self.detected & (self.keypoints[:, 2] >= threshold)

    def body_box(self, threshold: float = 0.3) -> tuple[float, float, float, float] | None:
        """x0, y0, x1, y1 around the visible body and feet keypoints, or None."""
        pts = self.keypoints[:23]
        pts = pts[pts[:, 2] >= threshold]
        if not self.detected or len(pts) < 2:
            return None
        lo, hi = pts[:, :2].min(axis=0), pts[:, :2].max(axis=0)
        return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))

    def body_score(self) -> float:
        return float(self.keypoints[BODY, 2].mean()) if self.detected else 0.0

    def transformed(self, scale: tuple[float, float], offset: tuple[float, float] = (0.0, 0.0)) -> Pose:
        """The same pose with pixel coordinates mapped by ``xy * scale + offset`` (mask dropped)."""
        kp = self.keypoints.copy()
        kp[:, 0] = kp[:, 0] * scale[0] + offset[0]
        kp[:, 1] = kp[:, 1] * scale[1] + offset[1]
        return replace(self, keypoints=kp, mask=None)

    def to_json(self) -> dict:
        kp = self.keypoints if self.detected else np.zeros_like(self.keypoints)
        out: dict = {"detected": bool(self.detected), "keypoints": np.round(kp, 3).tolist()}
        world = self.world if self.world is not None else np.zeros((NUM_WORLD, 4), np.float32)
        out["world"] = np.round(world, 5).tolist()
        return out

    @classmethod
    def from_json(cls, data: dict) -> Pose:
        world = np.asarray(data.get("world") or np.zeros((NUM_WORLD, 4)), dtype=np.float32)
        return cls(np.asarray(data["keypoints"], np.float32), world, None, bool(data["detected"]))


@dataclass
class PoseSequence:
    """The main person's pose in every frame of a video (or the one frame of an image, ``fps`` 0)."""

    frames: list[Pose]
    width: int
    height: int
    fps: float
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Pose]:
        return iter(self.frames)

    def __getitem__(self, index: int) -> Pose:
        return self.frames[index]

    @property
    def keypoints(self) -> np.ndarray:
        """(T, 133, 3) array; undetected frames have zero scores."""
        if not self.frames:
            return np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
        return np.stack([p.keypoints if p.detected else np.zeros_like(p.keypoints) for p in self.frames])

    @property
    def detected(self) -> np.ndarray:
        return np.array([p.detected for p in self.frames], dtype=bool)

    def detected_fraction(self) -> float:
        return float(self.detected.mean()) if self.frames else 0.0

    def with_keypoints(self, keypoints: np.ndarray, detected: np.ndarray | None = None) -> PoseSequence:
        """A copy with new (T, 133, 3) keypoints; world landmarks and masks are kept."""
        detected = self.detected if detected is None else detected
        frames = [
            replace(p, keypoints=keypoints[t].astype(np.float32), detected=bool(detected[t]))
            for t, p in enumerate(self.frames)
        ]
        return replace(self, frames=frames)

    def to_json(self) -> dict:
        return {
            "version": SCHEMA_VERSION,
            "width": int(self.width),
            "height": int(self.height),
            "fps": float(self.fps),
            "layout": LAYOUT,
            "frames": [p.to_json() for p in self.frames],
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), separators=(",", ":")))

    @classmethod
    def from_json(cls, data: dict) -> PoseSequence:
        if data.get("version") != SCHEMA_VERSION:
            raise PoseError("unsupported_pose_file", f"poses file version {data.get('version')!r} is not 1")
        if data.get("layout") != LAYOUT:
            layout = data.get("layout")
            raise PoseError("unsupported_pose_file", f"poses file layout {layout!r} is not {LAYOUT}")
        frames = [Pose.from_json(f) for f in data["frames"]]
        return cls(frames, int(data["width"]), int(data["height"]), float(data["fps"]))

    @classmethod
    def load(cls, path: str | Path) -> PoseSequence:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise PoseError("unreadable_pose_file", f"cannot read poses file {path}: {exc}") from exc
        try:
            return cls.from_json(data)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a frame that is not an object
            raise PoseError("unreadable_pose_file", f"malformed poses file {path}: {exc}") from exc
