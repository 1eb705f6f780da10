"""``draw_pose_mimicmotion``: MimicMotion's ``draw_pose`` (mimicmotion/dwpose/util.py) pinned pixel by pixel.

Expected colours follow from the rule by hand: OpenPose colours on a BGR canvas (converted to RGB at the end),
limb colour int(c * s1 * s2), the canvas dimmed by int(x * 0.6), joints int(c * s) with score > 0.3, a neck
score of 1 when both shoulders are seen, hands and face drawn wherever their canvas coordinates are >= 1.
"""

from __future__ import annotations

import numpy as np

from animate.pose import Pose, draw_pose_mimicmotion
from animate.pose.layout import FACE, LEFT_HAND

L_SHOULDER, R_SHOULDER = 5, 6


def _pose(points: dict[int, tuple[float, float, float]]) -> Pose:
    kp = np.zeros((133, 3), np.float32)
    for i, value in points.items():
        kp[i] = value
    return Pose(kp)


def test_colours_scores_neck_rule_and_stroke_on_an_unscaled_canvas() -> None:
    # ref_w = the short side: the canvas is the image itself (sr = 1) and the final resize a copy
    pose = _pose(
        {
            R_SHOULDER: (30, 50, 0.5),
            L_SHOULDER: (70, 50, 0.7),  # neck at (50, 50) with score 1 (both shoulders > 0.3)
            LEFT_HAND.start: (20, 80, 0.1),  # below 0.3, still drawn: hands have no score cut-off
            FACE.start: (80, 20, 0.5),
            FACE.start + 1: (0.5, 30, 1.0),  # canvas x int(0.5) = 0 is not > 0.01: not drawn
        }
    )
    img = draw_pose_mimicmotion(pose, 100, 100, ref_w=100)
    assert img.shape == (100, 100, 3) and img.dtype == np.uint8
    # limb 0 (neck -> right shoulder), BGR (255, 0, 0) * (1 * 0.5) -> 127, dimmed int(76.2) = 76, as RGB
    assert tuple(img[50, 40]) == (0, 0, 76)
    # limb 1 (neck -> left shoulder), BGR (255, 85, 0) * 0.7 -> (178, 59, 0), dimmed by truncation
    # int(106.8) = 106, int(35.4) = 35 (rounding would give 107)
    assert tuple(img[50, 60]) == (0, 35, 106)
    # 4 px half-width across the limb, then black
    assert img[46:55, 40].any(axis=1).all() and not img[45, 40].any() and not img[55, 40].any()
    # joints after the dimming: right shoulder BGR (255, 170, 0) * 0.5 -> (127, 85, 0); neck at full score
    assert tuple(img[50, 30]) == (0, 85, 127)
    assert tuple(img[50, 50]) == (0, 85, 255)
    assert tuple(img[50, 70]) == (0, 178, 59)  # left shoulder: BGR (85, 255, 0) * 0.7
    assert tuple(img[80, 20]) == (25, 0, 0)  # hand dot BGR (0, 0, int(0.1 * 255)) -> RGB (25, 0, 0)
    assert tuple(img[20, 80]) == (127, 127, 127) and tuple(img[20, 83]) == (127, 127, 127)  # radius 3
    assert not img[20, 84].any() and not img[30, 0].any()


def test_neck_needs_both_shoulders() -> None:
    pose = _pose({R_SHOULDER: (30, 50, 0.9), L_SHOULDER: (70, 50, 0.2)})
    img = draw_pose_mimicmotion(pose, 100, 100, ref_w=100)
    assert not img[50, 40].any() and not img[50, 50].any()  # no neck: no limb, no neck joint
    assert tuple(img[50, 30]) == (0, int(170 * np.float32(0.9)), int(255 * np.float32(0.9)))


def test_strokes_are_sized_on_the_2160_canvas_then_resized_bilinearly() -> None:
    # 1080x1080 -> a 2160x2160 canvas (sr = 2). The limb neck (405, 135) -> right shoulder (270, 135) lies
    # on canvas row 270, 4 px each side: canvas rows 266..274. A 2x bilinear reduction averages canvas
    # rows 2r and 2r + 1: output rows 133..136 are full (255 dimmed to 153), row 137 half, row 132 empty.
    pose = _pose({R_SHOULDER: (270, 135, 1.0), L_SHOULDER: (540, 135, 1.0)})
    img = draw_pose_mimicmotion(pose, 1080, 1080)
    column = img[:, 337, 2].astype(int)
    assert (column[133:137] == 153).all()
    assert column[137] in (76, 77) and column[132] == 0 and column[138] == 0
    assert not img[:, 337, :2].any()
