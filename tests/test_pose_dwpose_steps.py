"""DWPose's pre- and post-processing steps one at a time, against values worked out by hand: the letterbox,
the YOLOX grid decode per stride, class-aware NMS and the score gates, the padded crop box and its affine
crop with ImageNet normalisation, and the SimCC bins back to image pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from animate.pose.dwpose import (
    DWPoseEstimator,
    crop_affine,
    crop_person,
    decode_simcc,
    decode_yolox,
    letterbox,
    nms,
    person_boxes,
)
from animate.pose.errors import PoseError


def test_letterbox_puts_the_resized_image_top_left_on_grey():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (60, 200, 3), np.uint8)
    blob, ratio = letterbox(rgb, (64, 80))  # (h, w): the width limits, 80 / 200
    assert ratio == pytest.approx(0.4)
    assert blob.shape == (1, 3, 64, 80) and blob.dtype == np.float32 and blob.flags.c_contiguous
    resized = cv2.resize(rgb, (80, 24), interpolation=cv2.INTER_LINEAR)  # 200 x 0.4, 60 x 0.4
    np.testing.assert_array_equal(blob[0, :, :24, :].transpose(1, 2, 0), resized)
    assert (blob[0, :, 24:, :] == 114).all()
    tall = np.full((100, 10, 3), (1, 2, 3), np.uint8)
    blob, ratio = letterbox(tall, (50, 50))  # the height limits: 0.5 -> 5 x 50
    assert ratio == 0.5
    assert (blob[0, :, :, :5] == np.array([1, 2, 3])[:, None, None]).all()
    assert (blob[0, :, :, 5:] == 114).all()


def test_decode_yolox_adds_each_anchors_cell_and_scales_by_its_stride():
    size = (32, 64)  # (h, w): stride 8 -> 4 x 8 cells, 16 -> 2 x 4, 32 -> 1 x 2: 42 anchors
    raw = np.zeros((1, 42, 7), np.float64)
    raw[..., 4:] = np.arange(3)  # objectness and class scores pass through
    raw[0, 9, :4] = (0.5, 0.25, np.log(2), 0)  # stride 8, row 1, column 1
    raw[0, 32 + 6, :4] = (0, 0, 0, np.log(3))  # stride 16, row 1 (of 4 columns), column 2
    raw[0, 41, :4] = (-0.5, 0, 1, 1)  # stride 32, row 0, column 1
    out = decode_yolox(raw, size)
    assert out.shape == (1, 42, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 9, :4], [1.5 * 8, 1.25 * 8, 16, 8], rtol=1e-6)
    np.testing.assert_allclose(out[0, 38, :4], [2 * 16, 1 * 16, 16, 48], rtol=1e-6)
    np.testing.assert_allclose(out[0, 41, :4], [0.5 * 32, 0, np.e * 32, np.e * 32], rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, :4], [0, 0, 8, 8])  # the first cell at stride 8
    np.testing.assert_allclose(out[0, 31, :4], [7 * 8, 3 * 8, 8, 8])  # the last one: column 7, row 3
    np.testing.assert_allclose(out[0, 40, :4], [0, 0, 32, 32])
    np.testing.assert_array_equal(out[..., 4:], raw[..., 4:])
    assert not raw[0, 0, :4].any()  # the input is left alone
    custom = decode_yolox(np.zeros((1, 4 * 8 + 2 * 4, 5)), size, strides=(8, 16))
    np.testing.assert_allclose(custom[0, -1, :4], [3 * 16, 1 * 16, 16, 16])


def test_nms_keeps_the_best_and_what_overlaps_it_little():
    boxes = np.array(
        [
            [0, 0, 10, 10],  # A
            [0, 0, 10, 5],  # inside A: IoU 0.5
            [5, 0, 15, 10],  # IoU with A 50 / 150 = 1/3
            [100, 100, 110, 110],  # far
            [0, 0, 10, 9],  # IoU with A 0.9
        ],
        float,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.95])
    assert nms(boxes, scores, 0.45) == [4, 2, 3]  # 0.95 suppresses A (0.9) and the half box (IoU 5/9)
    assert nms(boxes, scores, 0.95) == [4, 0, 1, 2, 3]
    assert nms(boxes, scores, 0.3) == [4, 3]  # 2 overlaps 4 by 45 / 145 = 0.31
    assert nms(boxes[:0], scores[:0], 0.5) == []
    assert all(type(i) is int for i in nms(boxes, scores, 0.45))


def _pred(cx, cy, w, h, obj, cls, score):
    row = np.zeros(85, np.float32)
    row[:5] = (cx, cy, w, h, obj)
    row[5 + cls] = score
    return row


def test_person_boxes_are_class_aware_gated_and_in_image_pixels():
    predictions = np.stack(
        [
            _pred(100, 100, 40, 80, 0.5, 0, 1.0),  # person 0.5
            _pred(100, 100, 40, 80, 1.0, 2, 0.9),  # a car on it, 0.9: another class, suppresses nothing
            _pred(300, 100, 20, 20, 0.8, 0, 0.5),  # person 0.4 (objectness x class score)
            _pred(500, 100, 20, 20, 1.0, 0, 0.09),  # below the 0.1 floor
            _pred(700, 100, 20, 20, 1.0, 0, 0.11),  # above the floor
        ]
    )
    boxes = person_boxes(predictions, ratio=0.5)
    np.testing.assert_allclose(boxes, [[160, 120, 240, 280], [580, 180, 620, 220]])  # 0.5, 0.4: > 0.3
    low = person_boxes(predictions, ratio=1.0, score_threshold=0.05)
    np.testing.assert_allclose(low, [[80, 60, 120, 140], [290, 90, 310, 110], [690, 90, 710, 110]])
    assert len(person_boxes(predictions, ratio=1.0, score_threshold=0.5)) == 0  # 0.5 is not > 0.5
    assert person_boxes(predictions[1:2], ratio=1.0).shape == (0, 4)
    # within people, overlapping boxes go by nms_threshold; the result is most confident first
    two = np.stack([_pred(100, 100, 40, 80, 1.0, 0, 0.6), _pred(110, 100, 40, 80, 1.0, 0, 0.9)])
    assert len(person_boxes(two, 1.0)) == 1  # IoU 30 / 50 = 0.6 > 0.45
    kept = person_boxes(two, 1.0, nms_threshold=0.7)
    np.testing.assert_allclose(kept[:, 0], [90, 80])  # 0.9 first


def test_crop_affine_pads_and_widens_to_the_models_aspect():
    centre, scale = crop_affine(np.array([0.0, 0.0, 300.0, 100.0]), (288, 384))  # wide: 375 x 125
    np.testing.assert_allclose(centre, [150, 50])
    np.testing.assert_allclose(scale, [375, 500])  # the height grows to 375 / 0.75
    centre, scale = crop_affine(np.array([10.0, 20.0, 110.0, 320.0]), (288, 384))  # tall: 125 x 375
    np.testing.assert_allclose(centre, [60, 170])
    np.testing.assert_allclose(scale, [281.25, 375])  # the width grows to 375 x 0.75
    assert centre.dtype == np.float32 and scale.dtype == np.float32
    _, scale = crop_affine(np.array([0.0, 0.0, 80.0, 80.0]), (288, 384))  # square: 100 x 100 is wide at 3:4
    np.testing.assert_allclose(scale, [100, 100 / 0.75], rtol=1e-6)
    _, scale = crop_affine(np.array([0.0, 0.0, 100.0, 100.0]), (100, 100), padding=1.0)
    np.testing.assert_allclose(scale, [100, 100])
    _, scale = crop_affine(np.array([0.0, 0.0, 30.0, 40.0]), (30, 40), padding=2.0)  # exactly the aspect
    np.testing.assert_allclose(scale, [60, 80])


def test_crop_person_samples_the_box_and_normalises_like_imagenet():
    height, width = 80, 120
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([xs, ys, (xs + ys) % 200], -1).astype(np.uint8)
    # scale == input size: a pure shift, crop (x, y) = image (x + cx - w / 2, y + cy - h / 2)
    crop = crop_person(rgb, np.array([60.0, 40.0], np.float32), np.array([40.0, 20.0], np.float32), (40, 20))
    assert crop.shape == (1, 3, 20, 40) and crop.dtype == np.float32 and crop.flags.c_contiguous
    window = rgb[30:50, 40:80].astype(np.float32)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(crop[0].transpose(1, 2, 0), (window - mean) / std, rtol=1e-5, atol=1e-5)
    # twice the input size: every second pixel, crop (x, y) = image (2 x + cx - w, 2 y + cy - h)
    crop = crop_person(rgb, np.array([60.0, 40.0], np.float32), np.array([80.0, 40.0], np.float32), (40, 20))
    window = rgb[20:60:2, 20:100:2].astype(np.float32)
    np.testing.assert_allclose(crop[0].transpose(1, 2, 0), (window - mean) / std, rtol=1e-5, atol=1e-5)


def test_simcc_bins_are_split_then_mapped_through_the_crop():
    centre, scale = np.array([100.0, 50.0], np.float32), np.array([40.0, 80.0], np.float32)
    simcc_x, simcc_y = np.zeros((2, 80)), np.zeros((2, 160))
    simcc_x[0, 10], simcc_y[0, 120] = 0.6, 0.4
    simcc_x[1, 79], simcc_y[1, 0] = -0.2, -0.5  # negative peaks: score clipped to 0
    simcc_x[1, :79] = simcc_y[1, 1:] = -1
    kp = decode_simcc(simcc_x, simcc_y, centre, scale, (40, 80))
    assert kp.dtype == np.float32 and kp.shape == (2, 3)
    # bin 10 / 2 = crop x 5 of 40 -> 5 / 40 x 40 + 100 - 20; bin 120 / 2 = 60 of 80 -> 60 / 80 x 80 + 50 - 40
    np.testing.assert_allclose(kp[0], [85, 70, 0.4], rtol=1e-6)
    np.testing.assert_allclose(kp[1], [39.5 + 80, 10, 0.0], rtol=1e-6)
    one = decode_simcc(simcc_x, simcc_y, centre, scale, (40, 80), split_ratio=1.0)
    np.testing.assert_allclose(one[0, :2], [10 + 80, 120 + 10], rtol=1e-6)
    simcc_x[0, 10] = 3.0
    simcc_y[0, 120] = 2.0
    assert decode_simcc(simcc_x, simcc_y, centre, scale, (40, 80))[0, 2] == 1.0  # clipped to 1


def test_weights_files_are_both_needed(tmp_path: Path):
    detector, pose = DWPoseEstimator.files(tmp_path)
    assert detector == tmp_path / "dwpose" / "yolox_l.onnx"
    assert pose == tmp_path / "dwpose" / "dw-ll_ucoco_384.onnx"
    (tmp_path / "dwpose").mkdir()
    detector.write_bytes(b"")
    assert not DWPoseEstimator.available(tmp_path)
    with pytest.raises(PoseError) as info:
        DWPoseEstimator.from_weights(tmp_path)
    assert info.value.message == f"DWPose needs {detector} and {pose} (see weights/README.md)"
    detector.unlink()
    pose.write_bytes(b"")
    assert not DWPoseEstimator.available(tmp_path)
    with pytest.raises(PoseError, match="DWPose needs"):
        DWPoseEstimator.from_weights(tmp_path)


def test_letterbox_ratio_takes_the_tighter_side_of_a_wide_input_size():
    rgb = np.zeros((60, 100, 3), np.uint8)
    blob, ratio = letterbox(rgb, (32, 80))  # height 32 / 60 < width 80 / 100
    assert ratio == pytest.approx(32 / 60)
    assert (blob[0, :, :, 53:] == 114).all() and (blob[0, :, :, :53] == 0).all()  # 100 x 0.533 = 53 px


def test_decode_yolox_leaves_a_float32_output_alone():
    raw = np.zeros((1, 4 * 8 + 2 * 4 + 2, 6), np.float32)
    before = raw.copy()
    decode_yolox(raw, (32, 64))
    np.testing.assert_array_equal(raw, before)


def test_nms_overlap_is_the_true_intersection_over_union():
    # identical boxes under a pixel wide: IoU 1, one is kept
    thin = np.array([[0, 0, 0.5, 10], [0, 0, 0.5, 10]], float)
    assert nms(thin, np.array([0.9, 0.8]), 0.45) == [0]
    assert nms(thin[:, [1, 0, 3, 2]], np.array([0.9, 0.8]), 0.45) == [0]  # under a pixel tall
    # touching boxes share no area, side by side or one above the other
    for other in ([10, 0, 20, 10], [0, 10, 10, 20]):
        boxes = np.array([[0, 0, 10, 10], other], float)
        assert nms(boxes, np.array([0.9, 0.8]), 0.01) == [0, 1]
    # a half box: IoU 50 / 100 (to within the 1e-9 guard); kept at a threshold of exactly that IoU, not below
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], float)
    scores = np.array([0.9, 0.8])
    assert nms(boxes, scores, 0.5) == [0, 1]
    assert nms(boxes, scores, 50 / (100 + 1e-9)) == [0, 1]  # DWPose keeps iou <= threshold
    assert nms(boxes, scores, 0.499) == [0]


def test_the_detection_floor_is_above_a_tenth():
    predictions = np.stack([_pred(100, 100, 20, 20, 1.0, 0, 0.5), _pred(300, 100, 20, 20, 1.0, 0, 0.2)])
    predictions = predictions.astype(np.float64)
    predictions[0, 5] = 0.1  # exactly 0.1 in float64 (objectness 1)
    boxes = person_boxes(predictions, ratio=1.0, score_threshold=0.05)
    np.testing.assert_allclose(boxes, [[290, 90, 310, 110]])  # a score of exactly 0.1 is not above it


def test_simcc_score_is_per_keypoint():
    simcc_x, simcc_y = np.zeros((3, 8)), np.zeros((3, 8))
    simcc_x[0, 1], simcc_y[0, 1] = 0.9, 0.9
    simcc_x[1, 2], simcc_y[1, 2] = 0.2, 0.5  # its own x peak, not keypoint 0's
    kp = decode_simcc(simcc_x, simcc_y, np.zeros(2, np.float32), np.ones(2, np.float32) * 4, (4, 4))
    np.testing.assert_allclose(kp[:, 2], [0.9, 0.2, 0.0], rtol=1e-6)


def test_dwpose_without_onnxruntime_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # an import of it fails as if not installed
    with pytest.raises(PoseError) as info:
        DWPoseEstimator("detector.onnx", "pose.onnx")
    assert info.value.code == "pose_model_missing"
    assert info.value.message == "DWPose needs onnxruntime (pip install onnxruntime)"
