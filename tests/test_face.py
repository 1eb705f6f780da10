"""Face pipeline (animate/face): alignment by hand-computed transforms, dlib's embeddings on the shared
photos and videos, the ArcFace ONNX path on a tiny exported model, the identity score."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from animate.face import (
    NO_FACE,
    TEMPLATE_112,
    ArcFaceEmbedder,
    DlibEmbedder,
    Face,
    IdentityMeter,
    NoFaceError,
    align_face,
    cosine,
    detect_face,
    distance,
    embedder_name,
    load_embedder,
    reference_embedding,
    umeyama,
)
from animate.face.detect import five_from_68
from tests.conftest import SKELETON_ONLY, TALKING_HEAD, WOMAN_JPG


def _frames(path: Path, indices: set[int]) -> dict[int, np.ndarray]:
    out = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in indices:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= max(indices):
                break
    return out


@pytest.fixture(scope="module")
def woman() -> np.ndarray:
    return np.asarray(Image.open(WOMAN_JPG).convert("RGB"))


@pytest.fixture(scope="module")
def talking() -> dict[int, np.ndarray]:
    return _frames(TALKING_HEAD, {40, 120, 200})


@pytest.fixture(scope="module")
def embedder() -> DlibEmbedder:
    return DlibEmbedder()


@pytest.fixture(scope="module")
def woman_embedding(woman, embedder) -> np.ndarray:
    return reference_embedding(woman, embedder)


# --- alignment ---------------------------------------------------------------------------------------


def test_umeyama_recovers_a_hand_made_similarity():
    # points at half the template's scale, shifted by (10, 20): the map back is x2 then -(20, 40)
    source = TEMPLATE_112 * 0.5 + np.array([10.0, 20.0])
    matrix = umeyama(source, TEMPLATE_112)
    np.testing.assert_allclose(matrix, [[2.0, 0.0, -20.0], [0.0, 2.0, -40.0]], atol=1e-9)


def test_umeyama_undoes_a_rotation():
    # source = template rotated 90 degrees (x, y) -> (-y, x) about the origin, then shifted by (200, 0):
    # the inverse is (x, y) -> (y, 200 - x) i.e. [[0, 1, 0], [-1, 0, 200]]
    source = np.stack([-TEMPLATE_112[:, 1] + 200.0, TEMPLATE_112[:, 0]], axis=1)
    matrix = umeyama(source, TEMPLATE_112)
    np.testing.assert_allclose(matrix, [[0.0, 1.0, 0.0], [-1.0, 0.0, 200.0]], atol=1e-9)


def test_umeyama_never_reflects():
    mirrored = TEMPLATE_112 * np.array([-1.0, 1.0])
    matrix = umeyama(mirrored, TEMPLATE_112)
    assert np.linalg.det(matrix[:, :2]) > 0


@pytest.mark.parametrize("size", [112, 224])
def test_align_face_puts_landmarks_on_the_template(size):
    # five bright dots at the template points scaled x1.5, rotated 30 degrees and shifted: after
    # alignment each dot sits on the template point of the crop (dot centroid within half a pixel)
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    five = TEMPLATE_112 @ (1.5 * rotation).T + np.array([150.0, 60.0])
    image = np.zeros((400, 400, 3), np.uint8)
    yy, xx = np.mgrid[:400, :400]
    for x, y in five:
        image[(xx - x) ** 2 + (yy - y) ** 2 <= 16] = 255
    crop = align_face(image, five, size)
    assert crop.shape == (size, size, 3)
    expected = TEMPLATE_112 * size / 112  # the 224 crop is the 112 one scaled by 2, about the origin
    cy, cx = np.mgrid[:size, :size]
    for x, y in expected:
        window = (np.abs(cx - x) < 8 * size / 112) & (np.abs(cy - y) < 8 * size / 112)
        weight = crop[..., 0].astype(np.float64) * window
        assert weight.sum() > 0
        centroid = ((cx * weight).sum() / weight.sum(), (cy * weight).sum() / weight.sum())
        assert abs(centroid[0] - x) < 0.5 and abs(centroid[1] - y) < 0.5


def test_five_points_from_68():
    points = np.zeros((68, 2))
    points[36:42] = [[0, 0], [2, 0], [4, 0], [0, 2], [2, 2], [4, 2]]  # mean (2, 1)
    points[42:48] = 10.0  # mean (10, 10)
    points[30] = [5, 7]
    points[48] = [1, 9]
    points[54] = [8, 9]
    np.testing.assert_allclose(five_from_68(points), [[2, 1], [10, 10], [5, 7], [1, 9], [8, 9]])


# --- detection and dlib embeddings on real photos ----------------------------------------------------


def test_reference_face_is_found_where_the_head_is(woman):
    face = detect_face(woman)
    assert face is not None
    x0, y0, x1, y1 = face.box
    # the woman's head: x 420..580, y 270..440 of the 1080x1920 photo (seen by eye)
    assert 400 < x0 < (x0 + x1) / 2 < 560 < x1 < 600 and 250 < y0 < 300 and 400 < y1 < 460
    left_eye, right_eye, nose, mouth_l, _mouth_r = face.five
    assert left_eye[0] < nose[0] < right_eye[0] and max(left_eye[1], right_eye[1]) < nose[1] < mouth_l[1]


def test_embedding_survives_jpeg_reencode_and_crop_scale(woman, embedder, woman_embedding):
    buffer = io.BytesIO()
    Image.fromarray(woman).save(buffer, "JPEG", quality=60)
    reencoded = np.asarray(Image.open(buffer).convert("RGB"))
    cropped = woman[100:1500, 50:1000]
    scaled = np.asarray(Image.fromarray(cropped).resize((760, 1120), Image.BICUBIC))
    assert woman_embedding.shape == (128,)
    for variant in (reencoded, scaled):
        other = reference_embedding(variant, embedder)
        assert cosine(other, woman_embedding) >= 0.9
        assert distance(other, woman_embedding) < 0.6


def test_different_people_are_apart_and_one_person_is_close(talking, embedder, woman_embedding):
    talking_embeddings = [reference_embedding(frame, embedder) for frame in talking.values()]
    for emb in talking_embeddings:
        assert distance(emb, woman_embedding) > 0.6  # dlib's same-person threshold
    # the talking head against itself across 160 frames of speech and head motion
    assert distance(talking_embeddings[0], talking_embeddings[-1]) < 0.6
    assert cosine(talking_embeddings[0], talking_embeddings[-1]) > cosine(
        talking_embeddings[0], woman_embedding
    )


def test_face_less_image_is_no_face_detected(embedder):
    frame = next(iter(_frames(SKELETON_ONLY, {10}).values()))  # a drawn skeleton on black
    assert detect_face(frame) is None
    with pytest.raises(NoFaceError) as info:
        reference_embedding(frame, embedder)
    assert info.value.code == NO_FACE == "no_face_detected"


# --- identity score -----------------------------------------------------------------------------------


def test_identity_meter_samples_every_kth_frame_and_counts_faces(talking, embedder):
    frames = list(talking.values())
    reference = reference_embedding(frames[0], embedder)
    blank = np.zeros_like(frames[0])
    # 7 frames, every 2nd sampled: indices 0 (face), 2 (blank), 4 (face), 6 (blank) -> 4 sampled, 2 faces
    stream = [frames[0], blank, blank, blank, frames[2], frames[1], blank]
    meter = IdentityMeter(reference, embedder, every=2)
    for frame in stream:
        meter.update(frame)
    score = meter.result()
    assert score.frames == 4 and score.face_share == 0.5
    expected = [1.0, cosine(embedder.embed(frames[2], detect_face(frames[2], points=5)), reference)]
    assert score.mean == pytest.approx(np.mean(expected), abs=1e-6)
    assert score.min == pytest.approx(min(expected), abs=1e-6)
    assert score.to_dict()["embedder"] == "dlib_resnet_v1"


@pytest.mark.parametrize(
    ("total", "every", "sampled"), [(96, 8, 12), (24, 8, 3), (500, 21, 24), (14_400, 600, 24)]
)
def test_identity_meter_spaces_at_most_24_samples_over_a_long_video(embedder, total, every, sampled):
    meter = IdentityMeter(np.ones(128, np.float32), embedder)  # every 8 by default
    meter.for_length(total)
    assert meter.every == every  # ceil(total / 24) once that exceeds 8
    blank = np.zeros((8, 8, 3), np.uint8)  # no face: only the sampling is counted
    for _ in range(total):
        meter.update(blank)
    assert meter.result().frames == sampled


def test_identity_score_separates_reference_from_another_person(talking, embedder, woman_embedding):
    frames = list(talking.values())
    same = IdentityMeter(reference_embedding(frames[0], embedder), embedder, every=1)
    other = IdentityMeter(woman_embedding, embedder, every=1)
    for frame in frames[1:]:
        same.update(frame)
        other.update(frame)
    assert same.result().min > other.result().mean


# --- ArcFace ONNX -------------------------------------------------------------------------------------


def _export_tiny_arcface(path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    model = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 8, bias=False)
    )
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].weight[:3] = torch.eye(3)  # embedding = per-channel mean of the normalised crop, then zeros
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            torch.zeros(1, 3, 112, 112),
            str(path),
            input_names=["input.1"],
            output_names=["embedding"],
            dynamo=False,
        )


def test_arcface_onnx_is_picked_from_weights_face_and_normalises_rgb(tmp_path):
    assert embedder_name(tmp_path) == "dlib_resnet_v1"
    assert isinstance(load_embedder(tmp_path), DlibEmbedder)
    _export_tiny_arcface(tmp_path / "face" / "w600k_r50.onnx")
    assert embedder_name(tmp_path) == "arcface_onnx:w600k_r50.onnx"
    model = load_embedder(tmp_path)
    assert isinstance(model, ArcFaceEmbedder) and model.dim == 8 and model.size == 112
    # a uniform (255, 51, 0) image: every aligned crop is that colour; (x - 127.5) / 127.5 per RGB channel
    image = np.zeros((300, 300, 3), np.uint8)
    image[...] = (255, 51, 0)
    face = Face(
        box=(0, 0, 300, 300), score=1.0, landmarks=np.zeros((68, 2)), five=TEMPLATE_112 * 2, shape=None
    )
    np.testing.assert_allclose(model.embed(image, face), [1.0, -0.6, -1.0, 0, 0, 0, 0, 0], atol=1e-4)


def test_broken_onnx_is_weights_invalid(tmp_path):
    (tmp_path / "face").mkdir()
    (tmp_path / "face" / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(Exception) as info:
        load_embedder(tmp_path)
    assert getattr(info.value, "code", None) == "weights_invalid"
