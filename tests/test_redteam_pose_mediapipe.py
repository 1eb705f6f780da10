"""Red team (issue 20): MediaPipe Holistic's result -> our 133 COCO-WholeBody keypoints, without running it.

A stand-in graph hands ``MediaPipeEstimator.detect`` a result whose every landmark is distinct, so each
COCO-WholeBody slot can be traced back to the MediaPipe landmark it must come from (written out here from
COCO's and BlazePose's published orders, not from our table): the person's left hand into 91-111, the
right into 112-132, x scaled by the width and y by the height, the stand-in small toes at half score.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from animate.pose.mediapipe_estimator import MediaPipeEstimator

WIDTH, HEIGHT = 640, 360  # not square: x and y scales must not trade places

# COCO-17 body in COCO order -> BlazePose landmark (nose 0, left eye 2, right eye 5, left ear 7, right ear 8,
# shoulders 11/12, elbows 13/14, wrists 15/16, hips 23/24, knees 25/26, ankles 27/28)
COCO_FROM_BLAZEPOSE = [0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]
# feet 17-22: left big toe, left small toe, left heel, right big toe, right small toe, right heel
FEET_FROM_BLAZEPOSE = [31, 31, 29, 32, 32, 30]  # left foot index 31, right 32, heels 29 / 30


def _landmarks(count: int, base: float, visibility: bool = True):
    """``count`` landmarks at distinct normalised positions inside the frame; visibility 0.5 + i/200."""
    points = [
        SimpleNamespace(x=0.1 + 0.8 * i / count, y=base + 0.001 * i, z=0.0, visibility=0.5 + i / 200)
        for i in range(count)
    ]
    if not visibility:
        for p in points:
            del p.visibility
    return SimpleNamespace(landmark=points)


class _Graph:
    def __init__(self, result) -> None:
        self.result, self.frames = result, []

    def process(self, rgb):
        self.frames.append(rgb.shape)
        return self.result

    def close(self) -> None:
        pass


@pytest.fixture
def detected():
    result = SimpleNamespace(
        pose_landmarks=_landmarks(33, 0.1),
        pose_world_landmarks=_landmarks(33, 0.0),
        face_landmarks=_landmarks(468, 0.2, visibility=False),
        left_hand_landmarks=_landmarks(21, 0.3, visibility=False),
        right_hand_landmarks=_landmarks(21, 0.6, visibility=False),
        segmentation_mask=np.full((HEIGHT, WIDTH), 0.5, np.float32),
    )
    estimator = MediaPipeEstimator()
    estimator._graph = graph = _Graph(result)
    (pose,) = estimator.detect(np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    assert graph.frames == [(HEIGHT, WIDTH, 3)]
    return result, pose


def _pixels(landmark) -> tuple[float, float]:
    return landmark.x * WIDTH, landmark.y * HEIGHT


def test_each_hand_lands_in_the_persons_own_hand_slots(detected) -> None:
    result, pose = detected
    for start, hand in ((91, result.left_hand_landmarks), (112, result.right_hand_landmarks)):
        for i, landmark in enumerate(hand.landmark):
            np.testing.assert_allclose(pose.keypoints[start + i, :2], _pixels(landmark), rtol=1e-6)
            assert pose.keypoints[start + i, 2] == 1.0  # inside the frame


def test_body_and_feet_take_the_blazepose_landmark_of_the_same_name_scaled_by_width_and_height(
    detected,
) -> None:
    result, pose = detected
    for coco, blazepose in enumerate(COCO_FROM_BLAZEPOSE + FEET_FROM_BLAZEPOSE):
        landmark = result.pose_landmarks.landmark[blazepose]
        np.testing.assert_allclose(pose.keypoints[coco, :2], _pixels(landmark), rtol=1e-6)
        factor = 0.5 if coco in (18, 21) else 1.0  # the small toes only stand in for the foot index
        assert pose.keypoints[coco, 2] == pytest.approx(landmark.visibility * factor), coco


def test_the_face_is_68_mesh_vertices_and_the_world_and_mask_come_along(detected) -> None:
    result, pose = detected
    mesh = result.face_landmarks.landmark
    face = pose.keypoints[23:91]
    # every face point is some mesh vertex (x picks it: the vertices' x are distinct), in pixels
    for x, y, score in face:
        vertex = mesh[round((x / WIDTH - 0.1) / 0.8 * 468)]
        assert (x, y) == pytest.approx(_pixels(vertex), rel=1e-5) and score == 1.0
    assert pose.world is not None and pose.world.shape == (33, 4)
    assert pose.world[11, 3] == pytest.approx(result.pose_world_landmarks.landmark[11].visibility)
    assert pose.mask is not None and pose.mask.shape == (HEIGHT, WIDTH) and (pose.mask == 128).all()


def test_a_hand_outside_the_frame_scores_0_and_a_missing_one_stays_empty() -> None:
    left = _landmarks(21, 0.3, visibility=False)
    left.landmark[4].x = 1.2  # the thumb tip off the right edge
    result = SimpleNamespace(
        pose_landmarks=_landmarks(33, 0.1),
        pose_world_landmarks=None,
        face_landmarks=None,
        left_hand_landmarks=left,
        right_hand_landmarks=None,
        segmentation_mask=None,
    )
    estimator = MediaPipeEstimator(segmentation=False)
    estimator._graph = _Graph(result)
    (pose,) = estimator.detect(np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    assert pose.keypoints[91 + 4, 2] == 0.0 and pose.keypoints[91 + 3, 2] == 1.0
    assert (pose.keypoints[112:133] == 0).all() and (pose.keypoints[23:91] == 0).all()
    assert pose.world is None and pose.mask is None
