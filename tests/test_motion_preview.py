"""The motion preview: motion colours with the frame's skeleton in grey, so no frame is a blank white picture."""

from __future__ import annotations

import numpy as np

from animate.motion.visualize import PREVIEW_BONES, flow_to_color, motion_preview
from animate.pose.layout import L_SHOULDER, R_SHOULDER

R_ELBOW = 8  # COCO-WholeBody


def one_arm(score: float = 0.9) -> np.ndarray:
    """A right upper arm from (10, 20) to (50, 20); every other keypoint unseen."""
    keypoints = np.zeros((133, 3), np.float32)
    keypoints[R_SHOULDER] = (10, 20, score)
    keypoints[R_ELBOW] = (50, 20, score)
    return keypoints


def test_a_still_frame_shows_the_skeleton_in_grey_on_white() -> None:
    still = np.zeros((64, 64, 2), np.float32)  # frame 0: no motion
    out = motion_preview(still, one_arm())
    assert flow_to_color(still).min() == 255  # what the preview was: all white
    assert tuple(out[20, 30]) == PREVIEW_BONES  # the bone's middle
    assert tuple(out[20, 10]) == PREVIEW_BONES and tuple(out[20, 50]) == PREVIEW_BONES  # the joints
    assert out[50, 30].tolist() == [255, 255, 255] and out[5, 60].tolist() == [255, 255, 255]  # off the body
    # the neck needs both shoulders: with the left one unseen, no bone leaves the arm
    assert out[30:].min() == 255


def test_unseen_joints_are_not_drawn_and_the_colours_stay_off_the_bones() -> None:
    flow = np.zeros((64, 64, 2), np.float32)
    flow[40:60, 5:25] = (3.0, -1.0)  # a moving patch away from the arm
    assert np.array_equal(motion_preview(flow, one_arm(score=0.1), 4.0), flow_to_color(flow, 4.0))
    out = motion_preview(flow, one_arm(), 4.0)
    reference = flow_to_color(flow, 4.0)
    assert np.array_equal(out[30:], reference[30:])  # the motion colours are untouched below the arm
    assert not np.array_equal(out[:30], reference[:30])


def test_the_left_shoulder_completes_the_neck() -> None:
    keypoints = one_arm()
    keypoints[L_SHOULDER] = (50, 40, 0.9)
    out = motion_preview(np.zeros((64, 64, 2), np.float32), keypoints)
    # neck at the shoulders' mean (30, 30); bone (2, 3) runs from it to the right shoulder (10, 20)
    assert tuple(out[25, 20]) == PREVIEW_BONES
