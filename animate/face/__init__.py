"""Face landmarks -> aligned crops -> identity embeddings -> the identity score (issue 16).

Everything here runs on models inside pip wheels (dlib's detector, 68-point landmarks and ResNet); an
ArcFace ONNX model in ``weights/face/`` replaces the ResNet for embeddings when present.
"""

from animate.face.align import TEMPLATE_112, align_face, template, umeyama
from animate.face.detect import NO_FACE, Face, NoFaceError, detect_face, detect_faces, require_face
from animate.face.embed import (
    ArcFaceEmbedder,
    DlibEmbedder,
    FaceEmbedder,
    cosine,
    distance,
    embedder_name,
    find_arcface,
    load_embedder,
)
from animate.face.score import (
    DEFAULT_EVERY,
    IdentityMeter,
    IdentityScore,
    identity_score,
    reference_embedding,
)

__all__ = [
    "DEFAULT_EVERY",
    "NO_FACE",
    "TEMPLATE_112",
    "ArcFaceEmbedder",
    "DlibEmbedder",
    "Face",
    "FaceEmbedder",
    "IdentityMeter",
    "IdentityScore",
    "NoFaceError",
    "align_face",
    "cosine",
    "detect_face",
    "detect_faces",
    "distance",
    "embedder_name",
    "find_arcface",
    "identity_score",
    "load_embedder",
    "reference_embedding",
    "require_face",
    "template",
    "umeyama",
]
