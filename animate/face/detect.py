"""Finding the main face of an image and its landmarks, with the models that ship in pip wheels.

Detection is dlib's HOG frontal-face detector (inside ``dlib-bin``), landmarks are dlib's 68-point or
5-point shape predictor (inside ``face-recognition-models``): no download, CPU only. The 5-point one (eye
corners and the base of the nose; 9 MB, loads in ~0.2 s) is all dlib's ResNet needs for its face chip, so
the identity score uses it; the 68-point one (99 MB, ~2-5 s to load) gives the canonical five points for
aligned crops (ArcFace, training data). Large images are searched at most
``max_side`` pixels on their longest side (a 1080x1920 photo: 0.2 s instead of 0.7 s); small ones are
upsampled once so faces down to ~40 px are found. The landmarks are then fitted on the full-resolution
image. With several faces the largest one is the main person's.

The five canonical points (``Face.five``) come from the 68: each eye's centre (mean of its six
contour points), the nose tip (30) and the mouth corners (48, 54), in image order.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from animate.errors import AnimateError

NO_FACE = "no_face_detected"


class NoFaceError(AnimateError):
    code = NO_FACE


def dlib_model_path(name: str) -> Path:
    """A model file of the ``face-recognition-models`` wheel, found without importing the package (its
    ``__init__`` imports ``pkg_resources``, absent from recent setuptools)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise AnimateError("face_models_missing", "the face-recognition-models package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise AnimateError("face_models_missing", f"{path} is missing: reinstall face-recognition-models")
    return path


@dataclass(frozen=True)
class Face:
    """One detected face: ``box`` (x0, y0, x1, y1) in pixels, the detector's ``score``, the 68 landmarks
    (x, y), the five canonical points and dlib's shape object (for its face chips)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray  # (68, 2) or (5, 2) float32, dlib's order
    five: np.ndarray | None  # (5, 2) float64: eye, eye, nose tip, mouth corner, mouth corner (68 points only)
    shape: Any  # dlib.full_object_detection on the image the face was found in

    @property
    def size(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


def five_from_68(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


LANDMARK_MODELS = {68: "shape_predictor_68_face_landmarks.dat", 5: "shape_predictor_5_face_landmarks.dat"}


@lru_cache(maxsize=1)
def _detector() -> Any:
    import dlib

    return dlib.get_frontal_face_detector()


@lru_cache(maxsize=2)
def _predictor(points: int) -> Any:
    import dlib

    if points not in LANDMARK_MODELS:
        raise ValueError(f"landmarks must be 68 or 5 points, got {points}")
    return dlib.shape_predictor(str(dlib_model_path(LANDMARK_MODELS[points])))


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    return np.ascontiguousarray(image[..., :3])


def detect_faces(image: np.ndarray, max_side: int = 960, points: int = 68) -> list[Face]:
    """Every face found in ``image`` (H, W, 3 uint8 RGB), the largest first, with ``points`` (68 or 5)
    landmarks."""
    import cv2
    import dlib

    rgb = _rgb(image)
    detector, predictor = _detector(), _predictor(points)
    height, width = rgb.shape[:2]
    factor = min(1.0, max_side / max(height, width))
    small = (
        rgb
        if factor == 1.0
        else cv2.resize(rgb, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)
    )
    upsample = 1 if min(small.shape[:2]) < 480 else 0
    boxes, scores, _ = detector.run(small, upsample)
    faces = []
    for box, score in zip(boxes, scores, strict=True):
        rect = dlib.rectangle(
            round(box.left() / factor),
            round(box.top() / factor),
            round(box.right() / factor),
            round(box.bottom() / factor),
        )
        shape = predictor(rgb, rect)
        landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        faces.append(
            Face(
                box=(float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom())),
                score=float(score),
                landmarks=landmarks,
                five=five_from_68(landmarks) if len(landmarks) == 68 else None,
                shape=shape,
            )
        )
    faces.sort(key=lambda face: -face.size)
    return faces


def detect_face(image: np.ndarray, max_side: int = 960, points: int = 68) -> Face | None:
    """The main (largest) face of ``image``, or None."""
    faces = detect_faces(image, max_side=max_side, points=points)
    return faces[0] if faces else None


def require_face(image: np.ndarray, what: str = "the reference image", points: int = 68) -> Face:
    """The main face of ``image``; ``no_face_detected`` when there is none."""
    face = detect_face(image, points=points)
    if face is None:
        raise NoFaceError(message=f"no face was found in {what} (identity needs a visible frontal face)")
    return face
