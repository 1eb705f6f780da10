"""Red team (issue 20): MediaPipe Holistic's result -> our 133 COCO-WholeBody keypoints, without running it.

A stand-in graph hands ``MediaPipeEstimator.detect`` a result whose every landmark is distinct, so each
COCO-WholeBody slot can be traced back to the MediaPipe landmark it must come from (written out here from
COCO's and BlazePose's published orders, not from our table): the person's left hand into 91-111, the
right into 112-132, x scaled by the width and y by the height, the stand-in small toes at half score.
"""

from __future__ import annotations

import sys
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


class _FakeMediaPipe:
    """Stands in for the ``mediapipe`` package: records which solution was built with which arguments."""

    def __init__(self) -> None:
        self.built: list[tuple[str, dict]] = []
        outer = self

        class Solution:
            def __init__(self, kind: str, **kwargs) -> None:
                outer.built.append((kind, kwargs))
                self.closed = 0

            def close(self) -> None:
                self.closed += 1

        self.solutions = SimpleNamespace(
            holistic=SimpleNamespace(Holistic=lambda **kw: Solution("holistic", **kw)),
            pose=SimpleNamespace(Pose=lambda **kw: Solution("pose", **kw)),
        )


@pytest.mark.parametrize("static", [False, True])
def test_the_graph_is_built_once_with_mediapipes_own_argument_names(monkeypatch, static: bool) -> None:
    fake = _FakeMediaPipe()
    monkeypatch.setitem(sys.modules, "mediapipe", fake)
    estimator = MediaPipeEstimator(static=static, min_detection_confidence=0.4, min_tracking_confidence=0.7)
    graph = estimator._open()
    assert estimator._open() is graph  # built once, then reused
    expected = {
        "static_image_mode": static,
        "model_complexity": 1,  # the one pose landmark model inside the wheel
        "smooth_landmarks": False,  # smoothing.py does it
        "enable_segmentation": True,
        "smooth_segmentation": not static,  # a mask follows the video, not a still
        "min_detection_confidence": 0.4,
        "min_tracking_confidence": 0.7,
    }
    assert fake.built == [("holistic", {"refine_face_landmarks": False, **expected})]
    estimator.reset()  # a new video: the tracking state goes with the graph
    assert graph.closed == 1 and estimator._graph is None
    estimator.close()  # nothing left to close
    assert graph.closed == 1


def test_body_only_builds_blazepose_without_segmentation_smoothing(monkeypatch) -> None:
    fake = _FakeMediaPipe()
    monkeypatch.setitem(sys.modules, "mediapipe", fake)
    MediaPipeEstimator(whole_body=False, segmentation=False, smooth_landmarks=True)._open()
    ((kind, kwargs),) = fake.built
    assert kind == "pose"
    assert kwargs["enable_segmentation"] is False and kwargs["smooth_segmentation"] is False
    assert kwargs["smooth_landmarks"] is True and kwargs["static_image_mode"] is False
    assert (kwargs["min_detection_confidence"], kwargs["min_tracking_confidence"]) == (0.5, 0.5)


@pytest.mark.parametrize(
    "rgb",
    [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32)],
)
def test_only_an_rgb_uint8_frame_is_accepted(rgb) -> None:
    estimator = MediaPipeEstimator()
    estimator._graph = _Graph(None)
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 RGB frame"):
        estimator.detect(rgb)
    assert estimator._graph.frames == []


def test_nobody_found_is_an_empty_list() -> None:
    estimator = MediaPipeEstimator()
    estimator._graph = _Graph(SimpleNamespace(pose_landmarks=None))
    assert estimator.detect(np.zeros((8, 8, 3), np.uint8)) == []


def test_frame_edges_count_as_inside_and_the_mask_is_clipped_to_0_255() -> None:
    hand = _landmarks(21, 0.3, visibility=False)
    hand.landmark[0].x, hand.landmark[0].y = 0.0, 1.0  # exactly on the edges: inside
    hand.landmark[1].x = -1e-6  # just outside
    mask = np.array([[-0.3, 0.0, 0.5], [1.0, 1.4, 0.25]], np.float32)
    result = SimpleNamespace(
        pose_landmarks=_landmarks(33, 0.1),
        pose_world_landmarks=None,
        face_landmarks=None,
        left_hand_landmarks=hand,
        right_hand_landmarks=None,
        segmentation_mask=mask,
    )
    estimator = MediaPipeEstimator()
    estimator._graph = _Graph(result)
    (pose,) = estimator.detect(np.zeros((2, 3, 3), np.uint8))
    assert pose.detected is True and pose.keypoints.dtype == np.float32
    assert pose.keypoints[91, 2] == 1.0 and pose.keypoints[92, 2] == 0.0
    assert pose.mask.dtype == np.uint8
    assert pose.mask.tolist() == [[0, 0, 128], [255, 255, 64]]  # round(v * 255), v clipped to [0, 1]
    estimator.segmentation = False  # asked for no mask: none, even when the graph made one
    (pose,) = estimator.detect(np.zeros((2, 3, 3), np.uint8))
    assert pose.mask is None
