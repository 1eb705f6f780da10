"""Aligning a face to a canonical five-point template by a similarity transform.

The template is the five-point layout face-recognition models are trained on (ArcFace / insightface's
112x112 crop): left eye, right eye, nose tip, left mouth corner, right mouth corner, in image order (the
person's right eye is on the image's left). Larger crops scale the template (224x224 = 2x).

The transform is Umeyama's least-squares similarity (rotation, uniform scale, translation; no
reflection), from the detected points to the template.
"""

from __future__ import annotations

import cv2
import numpy as np

#: The five canonical points of a 112x112 crop (x, y), in image order: eye, eye, nose, mouth corner, corner.
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template(size: int) -> np.ndarray:
    """The five template points for a ``size`` x ``size`` crop (the 112 template scaled)."""
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    return TEMPLATE_112 * (size / 112.0)


def umeyama(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 similarity ``M`` minimising ``sum |M @ [s, 1] - t|^2`` over point pairs (Umeyama 1991)."""
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N >= 2, 2) point sets, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rotation = u @ sign @ vt
    variance = (src_c**2).sum() / len(src)
    if variance <= 0:
        raise ValueError("the source points coincide")
    scale = float(np.trace(np.diag(singular) @ sign) / variance)
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align_face(image: np.ndarray, five: np.ndarray, size: int = 112) -> np.ndarray:
    """The ``size`` x ``size`` crop of ``image`` (H, W, 3 uint8) with the face's five points on the template."""
    matrix = umeyama(five, template(size))
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
