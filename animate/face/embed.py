"""Face embeddings: one protocol, two models.

- ``DlibEmbedder`` (default, embedded): dlib's ResNet face-recognition model (128-d, 99.38% on LFW) from
  the ``face-recognition-models`` wheel, on dlib's own 150x150 face chip (25% padding). Its descriptors
  are compared by Euclidean distance (dlib's threshold: same person below 0.6); their norm is ~1.4, so
  cosines are compressed: ~0.99 for one person across re-encodes, ~0.86 for different people (shared media).
- ``ArcFaceEmbedder``: an ArcFace ONNX model (insightface's ``w600k_r50.onnx`` / ``glintr100.onnx``,
  512-d) on the 112x112 five-point aligned crop, pixels ``(x - 127.5) / 127.5`` RGB NCHW, used when a
  ``.onnx`` file is in ``weights/face/``.

``load_embedder(weights_dir)`` picks the ArcFace model when one is there, else dlib's. Identity scores use
the cosine of the embeddings (both models are trained for it).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from animate.errors import AnimateError
from animate.face.align import align_face
from animate.face.detect import Face, _rgb, dlib_model_path

FACE_DIR = "face"
DLIB_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


@runtime_checkable
class FaceEmbedder(Protocol):
    name: str
    dim: int
    points: int  # the landmarks it needs (``detect_face(..., points=...)``): 5 or 68

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The (dim,) float32 embedding of ``face`` in ``image`` (H, W, 3 uint8 RGB)."""
        ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance (dlib's measure: same person below 0.6)."""
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


@lru_cache(maxsize=1)
def _dlib_model() -> Any:
    import dlib

    return dlib.face_recognition_model_v1(str(dlib_model_path(DLIB_MODEL)))


class DlibEmbedder:
    name = "dlib_resnet_v1"
    dim = 128
    points = 5
    chip_size = 150
    padding = 0.25

    def chip(self, image: np.ndarray, face: Face) -> np.ndarray:
        """dlib's 150x150 aligned face chip (the input its ResNet was trained on)."""
        import dlib

        return np.asarray(
            dlib.get_face_chip(_rgb(image), face.shape, size=self.chip_size, padding=self.padding)
        )

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        descriptor = _dlib_model().compute_face_descriptor(np.ascontiguousarray(self.chip(image, face)))
        return np.asarray(descriptor, dtype=np.float32)


class ArcFaceEmbedder:
    """An ArcFace ONNX model on the 112x112 (or the model's input size) five-point aligned crop."""

    name = "arcface_onnx"
    points = 68

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own classes for broken files
            raise AnimateError("weights_invalid", f"{self.path}: not a loadable ONNX model ({exc})") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise AnimateError("weights_invalid", f"{self.path}: expected one (N, 3, H, W) input")
        self.input_name = inputs[0].name
        side = inputs[0].shape[2]
        self.size = side if isinstance(side, int) else 112
        output = self.session.get_outputs()[0].shape
        self.dim = output[-1] if isinstance(output[-1], int) else 512
        self.name = f"arcface_onnx:{self.path.name}"

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        if face.five is None:
            raise ValueError("ArcFace needs the canonical five points: detect with points=68")
        return align_face(_rgb(image), face.five, self.size)

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        crop = self.crop(image, face).astype(np.float32)
        batch = ((crop - 127.5) / 127.5).transpose(2, 0, 1)[None]
        (output,) = self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[:1]
        return np.asarray(output, dtype=np.float32).reshape(-1)


def find_arcface(weights_dir: str | Path | None) -> Path | None:
    """The ArcFace ONNX file in ``weights_dir/face/`` (the first by name), or None."""
    if weights_dir is None:
        return None
    folder = Path(weights_dir) / FACE_DIR
    files = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
    return files[0] if files else None


def embedder_name(weights_dir: str | Path | None) -> str:
    """Which embedder ``load_embedder`` would use, without loading it."""
    path = find_arcface(weights_dir)
    return f"arcface_onnx:{path.name}" if path is not None else DlibEmbedder.name


def load_embedder(weights_dir: str | Path | None = None) -> FaceEmbedder:
    path = find_arcface(weights_dir)
    return ArcFaceEmbedder(path) if path is not None else DlibEmbedder()
