"""Red team (issue 20): the ``PoseEstimator`` contract every estimator inherits (no model is run).

``detect`` is the one abstract method; ``reset`` and ``close`` are optional no-ops; a ``with`` block hands
back the estimator itself and closes it on the way out, an exception included; an estimator's detections
are independent frames unless it says it tracks by itself (MediaPipe does, DWPose does not).
"""

from __future__ import annotations

import numpy as np
import pytest

from animate.pose.dwpose import DWPoseEstimator
from animate.pose.estimator import PoseEstimator
from animate.pose.mediapipe_estimator import MediaPipeEstimator
from animate.pose.types import Pose


class Counting(PoseEstimator):
    def __init__(self) -> None:
        self.closed = 0

    def detect(self, rgb: np.ndarray) -> list[Pose]:
        return [Pose.empty()]

    def close(self) -> None:
        self.closed += 1


class Minimal(PoseEstimator):
    def detect(self, rgb: np.ndarray) -> list[Pose]:
        return []


def test_detect_is_the_one_method_an_estimator_must_write() -> None:
    class NoDetect(PoseEstimator):
        pass

    with pytest.raises(TypeError, match="detect"):
        NoDetect()  # type: ignore[abstract]
    assert PoseEstimator.__abstractmethods__ == frozenset({"detect"})


def test_reset_and_close_are_no_ops_by_default() -> None:
    estimator = Minimal()
    assert estimator.reset() is None and estimator.close() is None
    assert estimator.detect(np.zeros((4, 4, 3), np.uint8)) == []
    assert (estimator.name, estimator.tracks_internally) == ("estimator", False)


def test_a_with_block_hands_back_the_estimator_and_closes_it_once() -> None:
    estimator = Counting()
    with estimator as inside:
        assert inside is estimator
        assert estimator.closed == 0
    assert estimator.closed == 1


def test_a_with_block_closes_the_estimator_when_the_body_raises_and_lets_the_error_through() -> None:
    estimator = Counting()
    with pytest.raises(RuntimeError, match="boom"), estimator:
        raise RuntimeError("boom")
    assert estimator.closed == 1


def test_who_tracks_by_itself() -> None:
    # MediaPipe follows one person from frame to frame; DWPose detects every frame anew (tracking.py links)
    assert MediaPipeEstimator.tracks_internally is True and MediaPipeEstimator.name == "mediapipe"
    assert DWPoseEstimator.tracks_internally is False and DWPoseEstimator.name == "dwpose"
