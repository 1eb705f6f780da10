"""The OpenPose-18 view and hand bones derived from the COCO-WholeBody layout, checked by name."""

from __future__ import annotations

import numpy as np

from animate.pose.layout import BODY_NAMES, HAND_EDGES, NUM_KEYPOINTS, openpose18

#: OpenPose-18 body order as DWPose draws it (person's left/right), "neck" being the mid-shoulder.
OPENPOSE18_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip


def test_openpose18_picks_each_joint_by_name_and_builds_the_neck():
    keypoints = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    keypoints[:, 0] = np.arange(NUM_KEYPOINTS)  # x = index
    keypoints[:, 1] = 1000 + 2 * np.arange(NUM_KEYPOINTS)  # y = 1000 + 2 index
    keypoints[:, 2] = np.linspace(0.1, 0.9, NUM_KEYPOINTS)  # distinct scores
    out = openpose18(keypoints)
    assert out.shape == (18, 3) and out.dtype == np.float32
    for i, name in enumerate(OPENPOSE18_NAMES):
        if name == "neck":
            continue
        assert out[i].tolist() == keypoints[BODY_NAMES.index(name)].tolist(), name
    left, right = keypoints[BODY_NAMES.index("left_shoulder")], keypoints[BODY_NAMES.index("right_shoulder")]
    assert out[1, :2].tolist() == [(left[0] + right[0]) / 2, (left[1] + right[1]) / 2]
    assert out[1, 2] == min(left[2], right[2])


def test_hand_edges_chain_each_finger_from_the_wrist():
    # 21 points: wrist 0, then thumb 1-4, index 5-8, middle 9-12, ring 13-16, little 17-20.
    expected = []
    for first in (1, 5, 9, 13, 17):
        expected += [(0, first), (first, first + 1), (first + 1, first + 2), (first + 2, first + 3)]
    assert tuple(expected) == HAND_EDGES
