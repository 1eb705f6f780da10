"""The one object an engine receives: everything derived from the reference and the driving video."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from animate.motion.frames import CacheDirectory, FrameSource

if TYPE_CHECKING:
    from animate.motion.body_field import BodyMotion

#: a per-frame stack: an array (T, ...) or a lazy source of its frames (``animate.motion.frames``)
Frames = np.ndarray | FrameSource


#: Each rule's choices: ours first, then the published network's.
CONVENTION_CHOICES = {
    "keypoints": ("wholebody", "openpose18"),
    "trajectory": ("density", "dispose"),
    "cmp_io": ("resample", "dispose"),
    "unseen": ("skip", "zeros"),
    "seen": ("at_least", "above"),
    "depth": ("floor64", "champ"),
    "skeleton": ("pose_images", "dwpose"),
}


@dataclass(frozen=True)
class GuidanceConventions:
    """How guidance for a published network is made: the rules it was trained on, or ours.

    Each field is one named rule (README, "Reproducing published results"); ``for_networks`` picks a
    published network's rules whenever its weights are loaded, so its inputs stay in its training
    distribution. Upstream defects (unseen keypoints read as (0, 0)) only come with the ``dispose`` preset.
    """

    # keypoints of the sparse (CMP) and trajectory flows: "wholebody" (all 133) | "openpose18" (DisPose's)
    keypoints: str = "wholebody"
    # "density": written at the end point, blur scaled with the image, normalised by point density, first
    # flow zero | "dispose": written at int(start), fixed 199-tap sigma-20 unit-sum blur, first from reference
    trajectory: str = "density"
    # CMP's input/output: "resample" (bilinear reference, vectors by pixel centre, bilinear output) |
    # "dispose" (nearest reference, vectors at int(x * 384 / W), nearest output)
    cmp_io: str = "resample"
    # a keypoint unseen in a frame or the reference: "skip" | "zeros" (read as (0, 0): DisPose's defect)
    unseen: str = "skip"
    # seen at score >= 0.3 ("at_least") or > 0.3 ("above", DWPose's)
    seen: str = "at_least"
    # depth map: "floor64" (nearest 255, farthest 64 or less, 0.5 m minimum range) | "champ" (body min..max ->
    # 255..0 per frame)
    depth: str = "floor64"
    # the skeleton a `skeleton` guidance encoder reads: "pose_images" (the pose guider's) | "dwpose" (the
    # rendered body's joints in DWPose's annotator style, as Champ's encoder was trained on)
    skeleton: str = "pose_images"

    def __post_init__(self) -> None:
        for name, choices in CONVENTION_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"GuidanceConventions.{name} must be one of {choices}, got {getattr(self, name)!r}"
                )

    @classmethod
    def for_networks(
        cls, dispose: bool = False, champ: Iterable[str] = (), preset: str | None = None
    ) -> GuidanceConventions:
        """The rules for the loaded networks: ``dispose`` (DisPose.pth's ControlNet), ``champ`` (the guidance
        types of Champ's encoders); ``preset="dispose"`` adds DisPose's defects as well."""
        rules: dict[str, str] = {}
        if dispose or preset == "dispose":
            rules |= {"keypoints": "openpose18", "trajectory": "dispose", "cmp_io": "dispose"}
        if preset == "dispose":
            rules |= {"unseen": "zeros", "seen": "above"}
        champ = set(champ)
        if "depth" in champ:
            rules["depth"] = "champ"
        if "skeleton" in champ:
            rules["skeleton"] = "dwpose"
        return cls(**rules)

    def describe(self) -> str:
        """The rules that differ from ours, e.g. ``"keypoints=openpose18, trajectory=dispose"``."""
        default = GuidanceConventions()
        changed = [f"{k}={v}" for k, v in vars(self).items() if getattr(default, k) != v]
        return ", ".join(changed) or "ours"


@dataclass
class GuidanceBundle:
    """Guidance for T output frames of ``size`` = (width, height), all in output pixels.

    Per-frame image stacks are optional: an engine that needs them (diffusion) has them filled in; the
    warp engine streams from ``body`` (or, without a body fit, from the keypoints), so memory stays flat
    for long videos. A stack is an array or a ``FrameSource`` (lazy, or a ``FrameCache`` file the animator
    filled once): it indexes, slices and iterates like the array, and engines read it a window at a time.
    Images are uint8 RGB (T, H, W, 3); masks uint8 (.., H, W) with 0/255; flows float32 (T, H, W, 2) in
    pixels (x, y); keypoints float32 (T, 133, 3) COCO-WholeBody, retargeted onto the reference.
    ``dense_flow[t]`` moves reference pixels to frame t; ``trajectory_flow[t]`` is frame t-1 -> t.
    ``close()`` removes the on-disk frame caches (also done when the bundle is garbage-collected).
    """

    reference: np.ndarray  # (H, W, 3) the reference image at the output size
    reference_mask: np.ndarray  # (H, W) the reference person
    reference_keypoints: np.ndarray  # (133, 3)
    keypoints: np.ndarray  # (T, 133, 3)
    fps: float
    size: tuple[int, int]
    pose_images: Frames | None = None  # (T, H, W, 3) skeletons, DWPose convention
    skeleton: Frames | None = None  # (T, H, W, 3) a `skeleton` encoder's own image (Champ's style)
    depth: Frames | None = None  # (T, H, W, 3)
    normal: Frames | None = None  # (T, H, W, 3)
    semantic: Frames | None = None  # (T, H, W, 3)
    mask: Frames | None = None  # (T, H, W) the rendered target body
    dense_flow: Frames | None = None  # (T, H, W, 2)
    trajectory_flow: Frames | None = None  # (T, H, W, 2)
    sparse_flow: Frames | None = None  # (T, H, W, 2) CMP input
    sparse_mask: Frames | None = None  # (T, H, W)
    body: BodyMotion | None = None  # reference + transferred bodies in the output camera (None: no fit)
    extras: dict[str, object] = field(default_factory=dict)  # engine-specific data
    caches: CacheDirectory | None = field(default=None, repr=False)  # where FrameCache files live

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
            "skeleton": (t, height, width, 3),
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

    def close(self) -> None:
        """Remove the on-disk frame caches; the stacks they back cannot be read afterwards."""
        if self.caches is not None:
            self.caches.cleanup()

    def save_npz(self, path: str | Path) -> Path:
        """All arrays in one compressed file (for debugging and for feeding an engine elsewhere); lazy stacks
        are read in full."""
        arrays = {k: np.asarray(v) for k, v in vars(self).items() if isinstance(v, np.ndarray | FrameSource)}
        np.savez_compressed(path, fps=self.fps, size=np.array(self.size), **arrays)
        return Path(path)
