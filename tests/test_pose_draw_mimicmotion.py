"""MimicMotion's drawing (``draw_pose_mimicmotion``) at 2160 px, where its canvas is the output: a hand edge
is OpenCV's 2 px line between the two joints, and the joints radius-4 discs, nothing more (the footprint is
drawn here with OpenCV directly, from the sizes the upstream code states)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from animate.pose.draw import draw_pose_mimicmotion
from animate.pose.types import NUM_KEYPOINTS, Pose

S = 2160
LEFT_HAND = 91


@pytest.mark.parametrize("end", [(1000, 1200), (1150, 1200), (1200, 1000)])
def test_a_hand_edge_is_a_2px_line_between_two_radius_4_discs(end):
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    kp[LEFT_HAND] = (1000, 1000, 1.0)
    kp[LEFT_HAND + 1] = (*end, 1.0)
    image = draw_pose_mimicmotion(Pose(kp), S, S)
    expected = np.zeros((S, S), np.uint8)
    cv2.line(expected, (1000, 1000), end, 255, thickness=2)
    for point in ((1000, 1000), end):
        cv2.circle(expected, point, 4, 255, thickness=-1)
    drawn = image.max(axis=2) > 0
    assert (drawn == (expected > 0)).all()
    assert tuple(image[1000, 1000]) == (255, 0, 0)  # RGB of the canvas' BGR blue joint, score 1
