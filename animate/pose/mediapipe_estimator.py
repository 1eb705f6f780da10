"""MediaPipe Holistic (or Pose alone) as a ``PoseEstimator``: the default, its models ship in the wheel."""

from __future__ import annotations

import numpy as np

from animate.pose.estimator import PoseEstimator
from animate.pose.layout import FACE, FEET, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND
from animate.pose.mediapipe_map import BODY_FROM_POSE, FACE68_FROM_MESH, FEET_FROM_POSE, SMALL_TOE_SCORE
from animate.pose.types import Pose

_BODY = np.array(BODY_FROM_POSE)
_FEET = np.array(FEET_FROM_POSE)
_FACE = np.array(FACE68_FROM_MESH)


def _landmarks(lms: object, count: int, with_visibility: bool) -> np.ndarray:
    """(count, 3) normalised x, y and visibility (or 1) from a MediaPipe NormalizedLandmarkList."""
    pts = lms.landmark  # type: ignore[attr-defined]
    if with_visibility:
        return np.array([(p.x, p.y, p.visibility) for p in pts], dtype=np.float32)[:count]
    return np.array([(p.x, p.y, 1.0) for p in pts], dtype=np.float32)[:count]


def _in_frame(xy: np.ndarray) -> np.ndarray:
    return ((xy >= 0.0) & (xy <= 1.0)).all(axis=1).astype(np.float32)


class MediaPipeEstimator(PoseEstimator):
    """MediaPipe Holistic (body, face mesh, hands) or, with ``whole_body=False``, BlazePose alone.

    ``static=True`` treats every frame as an unrelated image (references); otherwise MediaPipe tracks
    the person from frame to frame, which is both faster and steadier. ``smooth_landmarks`` is MediaPipe's
    own filter; off by default because ``smoothing.py`` does it confidence-aware and tunable.
    """

    name = "mediapipe"
    tracks_internally = True

    def __init__(
        self,
        *,
        static: bool = False,
        whole_body: bool = True,
        segmentation: bool = True,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        smooth_landmarks: bool = False,
    ) -> None:
        self.static = static
        self.whole_body = whole_body
        self.segmentation = segmentation
        self._kwargs = {
            "static_image_mode": static,
            "model_complexity": 1,  # the only pose landmark model shipped in the mediapipe wheel
            "smooth_landmarks": smooth_landmarks,
            "enable_segmentation": segmentation,
            "smooth_segmentation": segmentation and not static,
            "min_detection_confidence": min_detection_confidence,
            "min_tracking_confidence": min_tracking_confidence,
        }
        self._graph: object | None = None

    def _open(self) -> object:
        if self._graph is None:
            import mediapipe as mp  # imported late: loading it costs ~1 s and the CLI may not need it

            if self.whole_body:
                self._graph = mp.solutions.holistic.Holistic(refine_face_landmarks=False, **self._kwargs)
            else:
                self._graph = mp.solutions.pose.Pose(**self._kwargs)
        return self._graph

    def detect(self, rgb: np.ndarray) -> list[Pose]:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {rgb.shape} {rgb.dtype}")
        height, width = rgb.shape[:2]
        result = self._open().process(np.ascontiguousarray(rgb))  # type: ignore[attr-defined]
        if result.pose_landmarks is None:
            return []
        kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        body = _landmarks(result.pose_landmarks, 33, with_visibility=True)
        kp[:17] = body[_BODY]
        kp[FEET] = body[_FEET]
        kp[FEET.start + 1, 2] *= SMALL_TOE_SCORE
        kp[FEET.start + 4, 2] *= SMALL_TOE_SCORE
        if self.whole_body:
            for part, lms, index in (
                (FACE, result.face_landmarks, _FACE),
                (LEFT_HAND, result.left_hand_landmarks, None),
                (RIGHT_HAND, result.right_hand_landmarks, None),
            ):
                if lms is None:
                    continue
                pts = _landmarks(lms, 468 if index is not None else 21, with_visibility=False)
                pts = pts[index] if index is not None else pts
                pts[:, 2] = _in_frame(pts[:, :2])
                kp[part] = pts
        kp[:, 0] *= width
        kp[:, 1] *= height
        world = None
        if result.pose_world_landmarks is not None:
            world = np.array(
                [(p.x, p.y, p.z, p.visibility) for p in result.pose_world_landmarks.landmark], np.float32
            )
        mask = None
        if self.segmentation and result.segmentation_mask is not None:
            mask = (np.clip(result.segmentation_mask, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return [Pose(kp, world, mask, detected=True)]

    def reset(self) -> None:
        # MediaPipe keeps tracking state inside the graph; a fresh graph is the only clean reset.
        self.close()

    def close(self) -> None:
        if self._graph is not None:
            self._graph.close()  # type: ignore[attr-defined]
            self._graph = None
