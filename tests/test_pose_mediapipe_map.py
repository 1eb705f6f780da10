"""The MediaPipe -> COCO-WholeBody table against MediaPipe's own names and regions: COCO's 17 body and 6 foot
names (written out here) must land on the BlazePose landmark of the same name (``PoseLandmark``), the hand
landmarks must be in COCO-WholeBody's hand order (``HandLandmark``), and each iBUG-68 face group must sit in
the FaceMesh region of that name (``face_mesh_connections``), the person's right on MediaPipe's right."""

from __future__ import annotations

import pytest

mp = pytest.importorskip("mediapipe")

from animate.pose.mediapipe_map import (  # noqa: E402
    BODY_FROM_POSE,
    FACE68_FROM_MESH,
    FEET_FROM_POSE,
    SMALL_TOE_SCORE,
)

COCO_BODY = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
    "left_ankle", "right_ankle",
)  # fmt: skip
# COCO-WholeBody feet 17-22 and the BlazePose point that stands for each (one toe point per foot)
COCO_FEET = (
    ("left_big_toe", "LEFT_FOOT_INDEX"), ("left_small_toe", "LEFT_FOOT_INDEX"), ("left_heel", "LEFT_HEEL"),
    ("right_big_toe", "RIGHT_FOOT_INDEX"), ("right_small_toe", "RIGHT_FOOT_INDEX"), ("right_heel", "RIGHT_HEEL"),
)  # fmt: skip
# COCO-WholeBody hand order: wrist, then thumb, forefinger, middle, ring, little finger, 4 points each from
# the palm out
COCO_HAND = ["WRIST"] + [
    f"{finger}_{joint}"
    for finger, joints in (
        ("THUMB", ("CMC", "MCP", "IP", "TIP")),
        ("INDEX_FINGER", ("MCP", "PIP", "DIP", "TIP")),
        ("MIDDLE_FINGER", ("MCP", "PIP", "DIP", "TIP")),
        ("RING_FINGER", ("MCP", "PIP", "DIP", "TIP")),
        ("PINKY", ("MCP", "PIP", "DIP", "TIP")),
    )
    for joint in joints
]


def test_body_points_take_the_blazepose_landmark_of_the_same_name():
    names = [landmark.name for landmark in mp.solutions.pose.PoseLandmark]
    assert len(BODY_FROM_POSE) == 17
    for coco, index in zip(COCO_BODY, BODY_FROM_POSE, strict=True):
        assert names[index] == coco.upper(), coco


def test_feet_take_the_foot_index_and_heel_and_the_stand_in_toe_counts_less():
    names = [landmark.name for landmark in mp.solutions.pose.PoseLandmark]
    for (coco, blazepose), index in zip(COCO_FEET, FEET_FROM_POSE, strict=True):
        assert names[index] == blazepose, coco
    assert 0 < SMALL_TOE_SCORE < 1


def test_hand_landmarks_are_in_coco_wholebody_hand_order():
    assert [landmark.name for landmark in mp.solutions.hands.HandLandmark] == COCO_HAND


def _region(name: str) -> set[int]:
    from mediapipe.python.solutions import face_mesh_connections

    return {i for edge in getattr(face_mesh_connections, name) for i in edge}


@pytest.mark.parametrize(
    ("points", "region", "at_least", "not_in"),
    [
        (range(0, 17), "FACEMESH_FACE_OVAL", 17, None),  # jaw: the silhouette
        (range(17, 22), "FACEMESH_RIGHT_EYEBROW", 4, "FACEMESH_LEFT_EYEBROW"),
        (range(22, 27), "FACEMESH_LEFT_EYEBROW", 4, "FACEMESH_RIGHT_EYEBROW"),
        (range(27, 31), "FACEMESH_NOSE", 4, None),  # bridge
        (range(31, 36), "FACEMESH_NOSE", 3, None),  # base
        (range(36, 42), "FACEMESH_RIGHT_EYE", 6, "FACEMESH_LEFT_EYE"),
        (range(42, 48), "FACEMESH_LEFT_EYE", 6, "FACEMESH_RIGHT_EYE"),
        (range(48, 68), "FACEMESH_LIPS", 20, None),  # outer and inner lips
    ],
)
def test_each_face_group_lies_in_its_facemesh_region(points, region, at_least, not_in):
    vertices = [FACE68_FROM_MESH[i] for i in points]
    assert sum(v in _region(region) for v in vertices) >= at_least
    if not_in:
        assert not any(v in _region(not_in) for v in vertices)


def test_face_points_are_68_distinct_mesh_vertices():
    assert len(FACE68_FROM_MESH) == 68 and len(set(FACE68_FROM_MESH)) == 68
    assert all(0 <= v < 468 for v in FACE68_FROM_MESH)
    assert FACE68_FROM_MESH[8] == 152  # the chin, FaceMesh's lowest silhouette vertex
