"""The one keypoint layout every pose in the project uses: COCO-WholeBody, 133 points.

Index ranges: 0-16 body (COCO order), 17-22 feet, 23-90 face (iBUG 68 order), 91-111 left hand,
112-132 right hand (both in the 21-point MediaPipe/OpenPose hand order). "Left" is the person's left.
The MediaPipe -> COCO-WholeBody table lives in ``mediapipe_map.py``; the OpenPose-18 view used for drawing
and for MimicMotion's global fit is derived here.
"""

from __future__ import annotations

import numpy as np

NUM_KEYPOINTS = 133
NUM_WORLD = 33  # MediaPipe BlazePose world landmarks, metres, hip-centred

BODY = slice(0, 17)
FEET = slice(17, 23)
FACE = slice(23, 91)
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)

BODY_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
FEET_NAMES: tuple[str, ...] = (
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
)  # fmt: skip

NOSE, L_EYE, R_EYE, L_EAR, R_EAR = 0, 1, 2, 3, 4
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 5, 6, 7, 8, 9, 10
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 11, 12, 13, 14, 15, 16
L_BIG_TOE, L_SMALL_TOE, L_HEEL, R_BIG_TOE, R_SMALL_TOE, R_HEEL = 17, 18, 19, 20, 21, 22
FACE_NOSE_TIP = 23 + 30  # iBUG point 30
LEFT_HAND_ROOT, RIGHT_HAND_ROOT = 91, 112

# Hand bones within one 21-point hand (wrist=0, then 4 joints per finger, thumb first).
HAND_EDGES: tuple[tuple[int, int], ...] = tuple(
    (0 if j == 0 else f * 4 + j, f * 4 + j + 1) for f in range(5) for j in range(4)
)

# OpenPose-18 (the order DWPose draws and MimicMotion fits): index into COCO-17, -1 = neck (mid-shoulder).
OPENPOSE18_FROM_COCO: tuple[int, ...] = (0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)

# Body bones as (parent, child) in COCO-17 indices; "NECK" and "PELVIS" are virtual midpoints.
NECK, PELVIS = -1, -2


def openpose18(keypoints: np.ndarray) -> np.ndarray:
    """(133, 3) whole-body keypoints -> (18, 3) OpenPose body; the neck's score is the weaker shoulder's."""
    out = np.zeros((18, 3), dtype=np.float32)
    for i, src in enumerate(OPENPOSE18_FROM_COCO):
        if src >= 0:
            out[i] = keypoints[src]
        else:
            sh = keypoints[[L_SHOULDER, R_SHOULDER]]
            out[i, :2] = sh[:, :2].mean(axis=0)
            out[i, 2] = sh[:, 2].min()
    return out
