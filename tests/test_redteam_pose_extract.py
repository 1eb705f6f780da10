"""Red team (issue 20): finishing a pose sequence is measured in frame heights, as ``smoothing.py`` says.

Two properties that hold whatever the filter's internals, for one person (so tracking has one choice):
the frame's width does not change the smoothed keypoints, and scaling the coordinates and the frame by
the same factor scales the result by it.
"""

from __future__ import annotations

import numpy as np
import pytest

from animate.pose.extract import SequenceOptions, finish_sequence
from animate.pose.types import Pose


def _moving_person(frames: int = 40, factor: float = 1.0) -> list[list[Pose]]:
    """A 17-point body that sways slowly, jitters by a few pixels and swings its right wrist fast."""
    rng = np.random.default_rng(7)
    base = np.stack([np.linspace(280, 360, 17), np.linspace(60, 320, 17)], axis=1)
    people = []
    for t in range(frames):
        kp = np.zeros((133, 3), np.float32)
        xy = base + np.array([20 * np.sin(t / 6), 0.0]) + rng.normal(0, 3, base.shape)
        xy[10] += np.array([120 * np.sin(t / 2), -40 * np.cos(t / 2)])  # the right wrist: fast
        kp[:17, :2] = xy * factor
        kp[:17, 2] = 0.6 + 0.4 * rng.random(17)  # scores vary: the filter weighs by them
        people.append([Pose(kp)])
    return people


def test_the_frames_width_does_not_change_the_smoothed_keypoints() -> None:
    people = _moving_person()
    narrow = finish_sequence(people, 640, 360, 25.0).keypoints
    wide = finish_sequence(people, 1920, 360, 25.0).keypoints
    raw = np.stack([p[0].keypoints for p in people])
    assert np.abs(narrow[:, :17, :2] - raw[:, :17, :2]).max() > 1.0  # it did smooth
    np.testing.assert_allclose(wide, narrow, rtol=0, atol=1e-3)


def test_scaling_the_frame_and_the_coordinates_scales_the_result() -> None:
    small = finish_sequence(_moving_person(), 640, 360, 25.0).keypoints
    large = finish_sequence(_moving_person(factor=3.0), 1920, 1080, 25.0).keypoints
    np.testing.assert_allclose(large[:, :17, :2], 3.0 * small[:, :17, :2], rtol=1e-4, atol=1e-2)
    assert large[:, :17, 2] == pytest.approx(small[:, :17, 2])


def _present(flags: list[bool]) -> list[list[Pose]]:
    people = []
    for t, seen in enumerate(flags):
        kp = np.zeros((133, 3), np.float32)
        kp[:17, 0], kp[:17, 1], kp[:17, 2] = 100.0 + t + np.arange(17), 50.0 + 10 * np.arange(17), 1.0
        people.append([Pose(kp)] if seen else [])
    return people


@pytest.mark.parametrize(("fps", "longest_filled"), [(12.0, 4), (25.0, 8), (20.0, 6), (2.0, 1)])
def test_the_longest_filled_gap_is_max_gap_seconds_to_the_nearest_frame(
    fps: float, longest_filled: int
) -> None:
    # 0.3 s is 3.6 frames at 12 fps (-> 4), 7.5 at 25 (-> 8), 6 at 20, 0.6 at 2 (-> at least 1)
    raw = SequenceOptions(smoothing=None)
    for gap, filled in ((longest_filled, True), (longest_filled + 1, False)):
        flags = [True] * 10 + [False] * gap + [True] * 10
        sequence = finish_sequence(_present(flags), 640, 360, fps, raw)
        assert bool(sequence.detected.all()) is filled, (fps, gap)
        if filled:  # linear between the frames either side of the gap
            assert sequence[10].keypoints[0, 0] == pytest.approx(100.0 + 10)
