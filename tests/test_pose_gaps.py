"""fill_gaps at its boundaries, against values interpolated by hand."""

from __future__ import annotations

import numpy as np
import pytest

from animate.pose.gaps import _runs, fill_gaps


def track(t: int = 12, score: float = 0.9) -> np.ndarray:
    kp = np.zeros((t, 133, 3), np.float32)
    kp[:, :, 0] = np.arange(t)[:, None] * 10.0  # x = 10 t
    kp[:, :, 1] = 500.0 - np.arange(t)[:, None] * 4.0  # y = 500 - 4 t
    kp[:, :, 2] = score
    return kp


def test_runs() -> None:
    assert _runs(np.array([True, True, False, True, False, False, True])) == [(0, 2), (3, 4), (6, 7)]
    assert _runs(np.array([False, False])) == []
    assert _runs(np.array([True])) == [(0, 1)]


def test_a_missing_person_run_of_exactly_max_gap_is_filled_one_longer_is_not() -> None:
    kp = track()
    detected = np.ones(12, bool)
    detected[2:5] = False  # 3 frames
    out, det = fill_gaps(kp, detected, max_gap=3)
    assert det.all()
    assert out[2:5, 7, 0] == pytest.approx([20, 30, 40]) and out[2:5, 7, 1] == pytest.approx([492, 488, 484])
    out, det = fill_gaps(kp, detected, max_gap=2)
    assert det.tolist() == [True, True, False, False, False] + [True] * 7
    assert (out[2:5, :, 2] == 0).all()  # undetected frames carry no scores


def test_gaps_at_either_end_are_not_invented() -> None:
    kp = track()
    detected = np.ones(12, bool)
    detected[:2] = False
    detected[-1] = False
    out, det = fill_gaps(kp, detected, max_gap=5)
    assert det.tolist() == [False, False] + [True] * 9 + [False]
    kp = track()
    kp[:2, 3, 2] = 0.0
    kp[-2:, 4, 2] = 0.0
    out, _ = fill_gaps(kp, np.ones(12, bool), max_gap=5)
    assert (out[:2, 3, 2] == 0).all() and (out[-2:, 4, 2] == 0).all()


def test_a_keypoint_gap_is_interpolated_with_the_lower_bounding_score() -> None:
    kp = track()
    kp[3, 9, 2], kp[7, 9, 2] = 0.8, 0.5
    kp[4:7, 9] = (0.0, 0.0, 0.1)  # below the threshold: missing
    kp[4:7, 9, 0] = 999  # junk where missing
    out, _ = fill_gaps(kp, np.ones(12, bool), max_gap=3)
    # a = frame 3 (x 30, y 488), b = frame 7 (x 70, y 472): w = 1/4, 2/4, 3/4
    assert out[4:7, 9, 0] == pytest.approx([40, 50, 60])
    assert out[4:7, 9, 1] == pytest.approx([484, 480, 476])
    assert out[4:7, 9, 2] == pytest.approx([0.5, 0.5, 0.5])
    assert out[3, 9, 2] == pytest.approx(0.8) and out[7, 9, 2] == pytest.approx(0.5)


def test_the_score_threshold_decides_what_is_missing() -> None:
    kp = track()
    kp[5, 2, 2] = 0.3  # exactly the threshold: seen
    kp[5, 3, 2] = 0.29
    kp[5, 3, 0] = 777.0
    out, _ = fill_gaps(kp, np.ones(12, bool), max_gap=2)
    assert out[5, 2, 2] == pytest.approx(0.3) and out[5, 2, 0] == 50
    assert out[5, 3, 0] == pytest.approx(50) and out[5, 3, 2] == pytest.approx(0.9)
    out, _ = fill_gaps(kp, np.ones(12, bool), max_gap=2, threshold=0.5)
    assert out[5, 2, 0] == pytest.approx(50) and out[5, 2, 2] == pytest.approx(0.9)  # 0.3 < 0.5: refilled


def test_keypoints_are_not_interpolated_into_frames_that_stay_missing() -> None:
    kp = track()
    detected = np.ones(12, bool)
    detected[4:8] = False  # 4 frames: too long for max_gap 3
    kp[3:9, 30, 2] = 0.0  # this keypoint is out around it too; unfillable
    out, det = fill_gaps(kp, detected, max_gap=3)
    assert not det[4:8].any()
    assert (out[4:8, :, 2] == 0).all()


def test_a_filled_frame_without_any_body_keypoint_stays_missing() -> None:
    kp = track()
    detected = np.ones(12, bool)
    detected[5] = False
    kp[2:9, :23, 2] = 0.0  # the body is gone for 7 frames around it: cannot be interpolated
    out, det = fill_gaps(kp, detected, max_gap=2)
    assert det[5] == False  # noqa: E712
    assert det[4] and det[6]  # detected frames stay detected even without body keypoints
    # with one body keypoint interpolable at frame 5, the frame counts as found
    kp[4:7, 22, 2] = 0.9
    kp[5, 22, 2] = 0.0
    out, det = fill_gaps(kp, detected, max_gap=2)
    assert det[5] and out[5, 22, 2] == pytest.approx(0.9)
    assert out[5, 23, 2] == pytest.approx(0.9)  # hands/face were filled too


def test_inputs_are_not_modified() -> None:
    kp = track()
    kp[5, 4, 2] = 0.0
    detected = np.ones(12, bool)
    detected[6] = False
    before_kp, before_det = kp.copy(), detected.copy()
    out, det = fill_gaps(kp, detected, max_gap=2)
    assert (kp == before_kp).all() and (detected == before_det).all()
    assert out.dtype == np.float32 and det.dtype == bool


def test_a_gap_starting_at_frame_1_is_filled() -> None:
    kp = track()
    detected = np.ones(12, bool)
    detected[1:3] = False
    out, det = fill_gaps(kp, detected, max_gap=2)
    assert det.all() and out[1:3, 0, 0] == pytest.approx([10, 20])


def test_an_unfillable_run_does_not_stop_the_keypoints_later_runs() -> None:
    kp = track()
    kp[0:2, 5, 2] = 0.0  # at the start: not filled
    kp[6, 5, 2] = 0.0  # later, short: filled
    out, _ = fill_gaps(kp, np.ones(12, bool), max_gap=2)
    assert (out[0:2, 5, 2] == 0).all()
    assert out[6, 5, 0] == pytest.approx(60) and out[6, 5, 2] == pytest.approx(0.9)


def test_a_filled_frame_whose_body_is_exactly_at_the_threshold_counts() -> None:
    kp = track(score=0.5)  # 0.5 is exact in float32, so the interpolated score equals the threshold
    detected = np.ones(12, bool)
    detected[5] = False
    out, det = fill_gaps(kp, detected, max_gap=1, threshold=0.5)
    assert det[5] and out[5, 0, 2] == 0.5
