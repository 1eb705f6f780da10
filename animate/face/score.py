"""The identity score: how much the output's face is the reference's.

For every ``every``-th output frame (``DEFAULT_EVERY`` = 8: 12 of 96 frames, ~0.3 s each on one CPU core
at 576x1024), the main face is found and embedded; the score is the cosine of that embedding to the
reference's. Reported: ``mean`` and ``min`` over the sampled frames with a face, ``face_share`` (the
share of sampled frames where a face was found), ``frames`` sampled and the ``embedder``'s name.
Frames are fed one by one (``IdentityMeter.update``), so the score is computed on the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from animate.errors import AnimateError
from animate.face.detect import NoFaceError, detect_face, require_face
from animate.face.embed import FaceEmbedder, cosine, load_embedder

DEFAULT_EVERY = 8
MAX_SAMPLES = 24  # a long video samples more sparsely, so the score costs seconds, not minutes


@dataclass(frozen=True)
class IdentityScore:
    mean: float | None
    min: float | None
    face_share: float
    frames: int
    embedder: str
    every: int = DEFAULT_EVERY

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": None if self.mean is None else round(self.mean, 4),
            "min": None if self.min is None else round(self.min, 4),
            "face_share": round(self.face_share, 4),
            "frames": self.frames,
            "every": self.every,
            "embedder": self.embedder,
        }


def reference_embedding(image: np.ndarray, embedder: FaceEmbedder) -> np.ndarray:
    """The embedding of the reference's main face; ``no_face_detected`` when it shows none."""
    return embedder.embed(image, require_face(image, points=embedder.points))


class IdentityMeter:
    """Streams output frames into an identity score against ``reference`` (an embedding)."""

    def __init__(self, reference: np.ndarray, embedder: FaceEmbedder, every: int = DEFAULT_EVERY) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.reference = np.asarray(reference, dtype=np.float32)
        self.embedder = embedder
        self.every = every
        self.similarities: list[float] = []
        self.sampled = 0
        self._seen = 0

    def for_length(self, total: int) -> None:
        """Space the samples over a video of ``total`` frames: every k-th frame, at most ``MAX_SAMPLES``."""
        self.every = max(self.every, -(-total // MAX_SAMPLES))

    def update(self, frame: np.ndarray) -> None:
        """Feed the next output frame (H, W, 3 uint8 RGB)."""
        index, self._seen = self._seen, self._seen + 1
        if index % self.every:
            return
        self.sampled += 1
        face = detect_face(frame, points=self.embedder.points)
        if face is not None:
            self.similarities.append(cosine(self.embedder.embed(frame, face), self.reference))

    def result(self) -> IdentityScore:
        values = self.similarities
        return IdentityScore(
            mean=float(np.mean(values)) if values else None,
            min=float(np.min(values)) if values else None,
            face_share=len(values) / self.sampled if self.sampled else 0.0,
            frames=self.sampled,
            embedder=self.embedder.name,
            every=self.every,
        )


def identity_score(
    reference: np.ndarray, frames, embedder: FaceEmbedder, every: int = DEFAULT_EVERY
) -> IdentityScore:
    """The identity score of ``frames`` (an iterable of RGB frames) against the ``reference`` embedding."""
    meter = IdentityMeter(reference, embedder, every)
    for frame in frames:
        meter.update(np.asarray(frame))
    return meter.result()


def start_meter(
    reference: np.ndarray,
    weights_dir: str | Path | None,
    required: bool = False,
    every: int = DEFAULT_EVERY,
) -> tuple[IdentityMeter | None, np.ndarray | None, str | None]:
    """For a run: ``(meter, reference embedding, note)``. A reference without a face: ``no_face_detected``
    when identity was ``required``, else no meter and a note (the run goes on without a score)."""
    try:
        embedder = load_embedder(weights_dir)
        face = detect_face(reference, points=embedder.points)
    except AnimateError as exc:  # face models missing or a broken ArcFace file
        if required:
            raise
        return None, None, f"identity score skipped: {exc.message}"
    if face is None:
        if required:
            raise NoFaceError(
                message="no face was found in the reference image (identity needs a visible frontal face)"
            )
        return None, None, "identity score skipped: no face found in the reference"
    embedding = embedder.embed(reference, face)
    return IdentityMeter(embedding, embedder, every), embedding, None
