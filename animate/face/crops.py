"""Face data for training shards (``animate train prepare``): per frame the aligned face crop and its box,
per reference frame the face embedding the identity adapter is trained on.

Crops are ``CROP_SIZE`` (112) x 112, the five 68-point-derived landmarks on the ArcFace template
(``animate.face.align``); embeddings are dlib's ResNet on its 5-point chip, exactly as at inference
(``animate.face.score.start_meter``), so training and inference see the same numbers.
"""

from __future__ import annotations

import numpy as np

from animate.face.align import align_face
from animate.face.detect import detect_face
from animate.face.embed import DlibEmbedder

CROP_SIZE = 112
NO_BOX = np.full(4, np.nan, np.float32)


def face_crop(frame: np.ndarray, size: int = CROP_SIZE) -> tuple[np.ndarray | None, np.ndarray]:
    """``(crop, box)``: the main face aligned to the template (``size`` x ``size`` uint8 RGB) and its box
    ``(x0, y0, x1, y1)`` float32; ``(None, NaN box)`` when no face is found."""
    face = detect_face(frame, points=68)
    if face is None:
        return None, NO_BOX.copy()
    return align_face(frame, face.five, size), np.asarray(face.box, np.float32)


def face_embedding(frame: np.ndarray, embedder: DlibEmbedder | None = None) -> np.ndarray:
    """dlib's 128-d embedding of the main face, NaN when there is none."""
    embedder = embedder or DlibEmbedder()
    face = detect_face(frame, points=embedder.points)
    if face is None:
        return np.full(embedder.dim, np.nan, np.float32)
    return embedder.embed(frame, face).astype(np.float32)


def faces_meta(frames_with_face: int) -> dict:
    """``meta["faces"]`` of a shard."""
    return {
        "crop_size": CROP_SIZE,
        "template": "arcface_112_5point",
        "landmarks": "dlib_68",
        "embedder": DlibEmbedder.name,
        "embedding_dim": DlibEmbedder.dim,
        "frames_with_face": int(frames_with_face),
    }
