"""DWPose pre/post-processing, end to end through onnxruntime, with tiny ONNX models built here.

The tiny models have DWPose's input/output signatures: the detector "images" (1, 3, 640, 640) ->
(1, 8400, 85) YOLOX head (objectness = brightness of each stride-8 cell, boxes 64 px), the pose model
"input" (1, 3, 384, 288) -> simcc_x (1, 133, 576), simcc_y (1, 133, 768) peaking at the brightest
column/row of the crop. A white square must come back at its own position through letterbox, box decode,
NMS, affine crop, SimCC decode and the inverse transforms.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")  # torch.onnx.export needs it
pytest.importorskip("onnxruntime")

from animate.pose.dwpose import (  # noqa: E402
    DWPoseEstimator,
    crop_affine,
    decode_simcc,
    letterbox,
    nms,
    person_boxes,
)
from animate.pose.errors import PoseError  # noqa: E402
from animate.pose.tracking import track_main_person  # noqa: E402

F = torch.nn.functional


class TinyDetector(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        red = images[:, 0:1] / 255.0
        obj = (torch.relu(F.avg_pool2d(red, 8) - 0.5) * 2.0).flatten(1)[..., None]  # (1, 6400, 1)
        cells = obj.shape[1]
        xy = torch.full((1, cells, 2), 0.5)
        wh = torch.full((1, cells, 2), math.log(64 / 8))
        cls = torch.cat([torch.ones(1, cells, 1), torch.zeros(1, cells, 79)], dim=-1)
        coarse = torch.zeros(1, 40 * 40 + 20 * 20, 85)
        return torch.cat([torch.cat([xy, wh, obj, cls], dim=-1), coarse], dim=1)


class TinyPose(torch.nn.Module):
    def forward(self, crop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grey = crop.mean(dim=1)  # (1, 384, 288)
        profiles = []
        for prof in (grey.mean(dim=1), grey.mean(dim=2)):  # columns (288), rows (384)
            prof = prof - prof.min()  # non-negative, so the pooling's zero padding cannot win at the edges
            prof = F.avg_pool1d(prof[:, None], 31, 1, 15)[:, 0]  # a single peak at the square's centre
            prof = (prof - prof.min()) / (prof.max() - prof.min() + 1e-6)
            profiles.append(torch.repeat_interleave(prof, 2, dim=-1)[:, None].expand(1, 133, -1))
        return profiles[0], profiles[1]


def _export(
    model: torch.nn.Module, shape: tuple[int, ...], name: str, outputs: list[str], path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, torch.zeros(shape), str(path), input_names=[name], output_names=outputs, dynamo=False
        )


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    (root / "dwpose").mkdir()
    _export(TinyDetector(), (1, 3, 640, 640), "images", ["output"], root / "dwpose" / "yolox_l.onnx")
    _export(
        TinyPose(),
        (1, 3, 384, 288),
        "input",
        ["simcc_x", "simcc_y"],
        root / "dwpose" / "dw-ll_ucoco_384.onnx",
    )
    return root


def _squares(centres: list[tuple[int, int]], size: int = 16) -> np.ndarray:
    img = np.zeros((960, 1280, 3), np.uint8)
    for cx, cy in centres:
        img[cy - size // 2 : cy + size // 2, cx - size // 2 : cx + size // 2] = 255
    return img


def test_letterbox_scales_to_fit_on_grey() -> None:
    blob, ratio = letterbox(np.full((960, 1280, 3), 255, np.uint8), (640, 640))
    assert ratio == 0.5 and blob.shape == (1, 3, 640, 640) and blob.dtype == np.float32
    assert blob[0, :, :480].min() == 255 and blob[0, :, 480:].max() == 114


def test_person_boxes_nms_class_and_score_filtering() -> None:
    def pred(cx: float, cy: float, w: float, h: float, score: float, cls: int) -> np.ndarray:
        row = np.zeros(85, np.float32)
        row[:5] = (cx, cy, w, h, 1.0)
        row[5 + cls] = score
        return row

    predictions = np.stack([
        pred(100, 100, 50, 100, 0.8, 0),  # overlaps the next one, weaker: suppressed
        pred(104, 102, 50, 100, 0.9, 0),
        pred(400, 300, 60, 120, 0.5, 0),
        pred(250, 250, 80, 80, 0.95, 3),  # not a person
        pred(500, 100, 40, 90, 0.2, 0),  # too unsure
    ])  # fmt: skip
    boxes = person_boxes(predictions, ratio=0.5)
    np.testing.assert_allclose(boxes, [[158, 104, 258, 304], [740, 480, 860, 720]])
    assert nms(
        np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]]), np.array([0.5, 0.9, 0.1]), 0.45
    ) == [1, 2]


def test_simcc_decode_maps_crop_bins_back_to_image_pixels() -> None:
    centre, scale = crop_affine(np.array([100.0, 200.0, 200.0, 400.0]), (288, 384))
    np.testing.assert_allclose(centre, [150, 300])
    np.testing.assert_allclose(scale, [187.5, 250])  # 1.25x padded, widened to 3:4
    simcc_x, simcc_y = np.zeros((133, 576)), np.zeros((133, 768))
    simcc_x[:, 288], simcc_y[:, 384] = 0.8, 0.7  # the crop's centre
    simcc_x[5, 0], simcc_y[5, 767] = 1.2, 0.9  # its bottom-left corner, over-confident
    kp = decode_simcc(simcc_x, simcc_y, centre, scale, (288, 384))
    np.testing.assert_allclose(kp[0], [150, 300, 0.7])
    np.testing.assert_allclose(kp[5], [150 - 93.75, 300 + 125 - 250 / 768, 0.9], atol=1e-3)


def test_dwpose_estimator_finds_each_person_where_they_are(weights_dir: Path) -> None:
    assert DWPoseEstimator.available(weights_dir)
    est = DWPoseEstimator.from_weights(weights_dir)
    assert est.det_size == (640, 640) and est.pose_wh == (288, 384)
    image = _squares([(328, 168), (968, 712)])
    boxes = est.detect_people(image)
    assert len(boxes) == 2
    centres = sorted(((b[:2] + b[2:]) / 2).round().tolist() for b in boxes)
    assert centres == [[328, 168], [968, 712]]
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 128)  # 64 px in the 640 input = 128 px here
    poses = est.detect(image)
    assert len(poses) == 2
    found = sorted(p.keypoints[0, :2].tolist() for p in poses)
    np.testing.assert_allclose(found, [[328, 168], [968, 712]], atol=3.0)
    assert all(p.keypoints[:, 2].min() > 0.9 for p in poses)
    # Many people per frame: the tracker keeps the main one (here the more central square).
    frames = [est.detect(_squares([(648, 488), (200, 200)])) for _ in range(3)]
    track = track_main_person(frames, 1280, 960)
    assert all(abs(p.keypoints[0, 0] - 648) < 3 for p in track)
    assert est.detect(np.zeros((960, 1280, 3), np.uint8)) == []


def test_dwpose_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    assert not DWPoseEstimator.available(tmp_path)
    with pytest.raises(PoseError) as info:
        DWPoseEstimator.from_weights(tmp_path)
    assert info.value.code == "pose_model_missing"
