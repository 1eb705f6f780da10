"""Keypoint motion under each named rule (GuidanceConventions): which keypoints count as seen (a score exactly
at 0.3 separates DWPose's "above" from our "at_least"), where DisPose's grid cells fall at the image edge,
how unseen keypoints are treated, and the output types. Expected values are computed by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from animate.motion.bundle import GuidanceConventions
from animate.motion.keypoint_flow import (
    conventional_sparse_motion,
    conventional_trajectory,
    dispose_sparse_motion,
    dispose_trajectory_flow,
    seen,
    sparse_motion,
    trajectory_flow,
)

TIE = np.float32(0.3)  # exactly the threshold in float32, the scores' own precision


def two_points(ref_score=1.0, frame_score=1.0, n_frames: int = 2) -> tuple[np.ndarray, np.ndarray]:
    reference = np.zeros((133, 3), np.float32)
    reference[0] = (40.0, 30.0, ref_score)
    reference[5] = (80.0, 60.0, 1.0)
    frames = np.repeat(reference[None], n_frames, 0)
    frames[:, 0, :2] += (6.0, -4.0)
    frames[:, 0, 2] = frame_score
    frames[:, 5, :2] += (2.0, 2.0)
    return reference, frames


def test_seen_at_the_threshold_depends_on_the_rule() -> None:
    scores = np.array([0.29, TIE, 0.31], np.float32)
    assert seen(scores).tolist() == [False, True, True]
    assert seen(scores, strict=True).tolist() == [False, False, True]


@pytest.mark.parametrize("cmp_io", ["resample", "dispose"])
def test_conventional_sparse_motion_applies_the_seen_rule(cmp_io: str) -> None:
    reference, frames = two_points(frame_score=TIE)
    at_least = GuidanceConventions(cmp_io=cmp_io, seen="at_least")
    above = GuidanceConventions(cmp_io=cmp_io, seen="above")
    _, mask_at_least = conventional_sparse_motion(reference, frames, (128, 96), at_least)
    _, mask_above = conventional_sparse_motion(reference, frames, (128, 96), above)
    assert mask_at_least[0].sum() == 2  # keypoint 0 at exactly 0.3 counts
    assert mask_above[0].sum() == 1  # DWPose's rule: it does not
    expected = sparse_motion(reference, frames, (128, 96)) if cmp_io == "resample" else None
    if expected is not None:
        assert (conventional_sparse_motion(reference, frames, (128, 96), at_least)[0] == expected[0]).all()


def test_conventional_sparse_motion_passes_the_unseen_rule() -> None:
    reference, frames = two_points(frame_score=0.0)
    skip = GuidanceConventions(cmp_io="dispose", unseen="skip")
    zeros = GuidanceConventions(cmp_io="dispose", unseen="zeros")
    _, mask_skip = conventional_sparse_motion(reference, frames, (128, 96), skip)
    flow_zeros, mask_zeros = conventional_sparse_motion(reference, frames, (128, 96), zeros)
    assert mask_skip[0].sum() == 1
    # "zeros" writes every keypoint: 0 and 5, and the never-seen ones all at the grid's pixel (0, 0)
    assert mask_zeros[0].sum() == 3 and mask_zeros[0, 0, 0] == 1
    # upstream's defect: the unseen keypoint reads as (0, 0), so its vector is minus its reference position
    x, y = int(40 * 384 / 128), int(30 * 384 / 96)
    assert flow_zeros[0, y, x] == pytest.approx((-40 * 384 / 128, -30 * 384 / 96))


def test_dispose_sparse_motion_defaults_and_the_last_grid_cell() -> None:
    reference, frames = two_points(frame_score=TIE)
    flow, mask = dispose_sparse_motion(reference, frames, (128, 96))
    assert flow.dtype == np.float32 and mask.dtype == np.float32
    assert flow.shape == (2, 384, 384, 2) and mask[0].sum() == 2  # default: at_least
    assert dispose_sparse_motion(reference, frames, (128, 96), strict=True)[1][0].sum() == 1
    # a keypoint on the last pixel column/row lands in the last cell: int(383 / 384 * 384) = 383
    reference, frames = two_points()
    reference[5, :2] = (383.0, 383.0)
    frames[:, 5, :2] = (380.0, 383.0)
    flow, mask = dispose_sparse_motion(reference, frames, (384, 384))
    assert mask[0, 383, 383] == 1 and flow[0, 383, 383] == pytest.approx((-3.0, 0.0))


def test_dispose_trajectory_flow_seen_rule_and_dtype() -> None:
    reference, frames = two_points(ref_score=TIE)
    loose = dispose_trajectory_flow(reference, frames, (128, 96))
    strict = dispose_trajectory_flow(reference, frames, (128, 96), strict=True)
    assert loose.dtype == np.float32 and loose.shape == (2, 96, 128, 2)
    # step 0 (reference -> frame 0): keypoint 0 writes (6, -4) only when the 0.3 reference score counts
    assert loose[0, 30, 40, 0] > strict[0, 30, 40, 0] + 1e-4


@pytest.mark.parametrize("trajectory", ["density", "dispose"])
def test_conventional_trajectory_applies_the_rules(trajectory: str) -> None:
    reference, frames = two_points(frame_score=TIE, n_frames=3)
    frames[1:, 0, 2] = 1.0
    frames[2, 0, :2] += (5.0, 0.0)
    at_least = GuidanceConventions(trajectory=trajectory, seen="at_least")
    above = GuidanceConventions(trajectory=trajectory, seen="above")
    a = conventional_trajectory(reference, frames, (128, 96), at_least)
    b = conventional_trajectory(reference, frames, (128, 96), above)
    if trajectory == "density":
        assert (a == trajectory_flow(frames, (128, 96))).all()
        assert (b == trajectory_flow(frames, (128, 96), strict=True)).all()
        # step 0 -> 1: keypoint 0 is at 0.3 in frame 0, so only "at_least" moves it (by 0: it did not move)
        assert np.abs(a[2]).max() > 0 and np.abs(b[2]).max() > 0
    else:
        assert (a == dispose_trajectory_flow(reference, frames, (128, 96))).all()
        assert (b == dispose_trajectory_flow(reference, frames, (128, 96), strict=True)).all()
        assert not np.array_equal(a, b)


def test_conventional_rules_select_the_keypoint_set() -> None:
    reference, frames = two_points()
    reference[100] = (10.0, 10.0, 1.0)  # a hand point: only in the whole-body set
    frames[:, 100] = (20.0, 10.0, 1.0)
    whole = conventional_sparse_motion(
        reference, frames, (128, 96), GuidanceConventions(keypoints="wholebody")
    )
    body = conventional_sparse_motion(
        reference, frames, (128, 96), GuidanceConventions(keypoints="openpose18")
    )
    assert whole[1][0, 10, 10] == 1 and body[1][0, 10, 10] == 0


def one_point(path: list[tuple[float, float, float]]) -> np.ndarray:
    frames = np.zeros((len(path), 133, 3), np.float32)
    for t, point in enumerate(path):
        frames[t, 0] = point
    return frames


def test_trajectory_flow_is_the_displacement_under_a_unit_peak_gaussian() -> None:
    size = (256, 256)
    sigma = 20.0 * 256 / 1024  # DisPose's 20 px at 1024, scaled: 5 px
    frames = one_point([(95.0, 100.0, 1.0), (100.0, 100.0, 1.0)])  # moves by (+5, 0) onto (100, 100)
    flow = trajectory_flow(frames, size, downsample=1)
    assert flow.dtype == np.float32 and flow.shape == (2, 256, 256, 2)
    assert not flow[0].any()  # frame 0 has no step
    assert flow[1, 100, 100] == pytest.approx((5.0, 0.0), abs=1e-4)
    for d in (3, 7, 12):
        gauss = np.exp(-(d**2) / (2 * sigma**2))
        assert flow[1, 100, 100 + d, 0] == pytest.approx(5.0 * gauss, rel=1e-3, abs=1e-6)
        assert flow[1, 100 - d, 100, 0] == pytest.approx(5.0 * gauss, rel=1e-3, abs=1e-6)
    assert not flow[1, 100, 100 + 26 :].any()  # truncated at 99 / 20 sigma = 24.75 px


def test_trajectory_flow_borders_are_zero_padded_not_reflected() -> None:
    frames = one_point([(0.0, 50.0, 1.0), (2.0, 50.0, 1.0)])
    flow = trajectory_flow(frames, (256, 256), downsample=1)
    sigma = 5.0
    # at x = 2 (the point) and x = 6: the plain Gaussian ratio, no mass mirrored back from x < 0
    assert flow[1, 50, 6, 0] == pytest.approx(2.0 * np.exp(-16 / (2 * sigma**2)), rel=1e-3)


def test_trajectory_flow_steps_need_the_point_seen_at_both_ends_and_go_on_after_an_empty_step() -> None:
    frames = one_point([(100.0, 100.0, 1.0), (104.0, 100.0, 0.0), (108.0, 100.0, 1.0), (112.0, 100.0, 1.0)])
    flow = trajectory_flow(frames, (256, 256), downsample=1)
    assert not flow[1].any() and not flow[2].any()  # 0 -> 1 and 1 -> 2 have an unseen end
    assert flow[3, 100, 112] == pytest.approx((4.0, 0.0), abs=1e-4)  # an empty step does not end the loop
    tie = one_point([(100.0, 100.0, 1.0), (104.0, 100.0, TIE)])
    assert trajectory_flow(tie, (256, 256), downsample=1)[1].any()
    assert not trajectory_flow(tie, (256, 256), downsample=1, strict=True)[1].any()
    assert not trajectory_flow(tie, (256, 256), threshold=0.5, downsample=1)[1].any()


def test_trajectory_flow_default_downsampling_is_4() -> None:
    frames = one_point([(500.0, 500.0, 1.0), (510.0, 500.0, 1.0)])
    assert (
        trajectory_flow(frames, (1024, 1024)) == trajectory_flow(frames, (1024, 1024), downsample=4)
    ).all()
    assert not (
        trajectory_flow(frames, (1024, 1024)) == trajectory_flow(frames, (1024, 1024), downsample=5)
    ).all()


def test_sparse_motion_threshold_strict_and_points_off_the_image() -> None:
    reference = np.zeros((133, 3), np.float32)
    reference[0] = (-5.0, 10.0, 1.0)  # left of the image: written at column 0
    reference[1] = (70.0, -3.0, 1.0)  # above: row 0
    reference[2] = (130.0, 40.0, 1.0)  # right of a 128 px image: column 127
    reference[3] = (30.0, 100.0, 1.0)  # below a 96 px image: row 95
    reference[4] = (50.0, 50.0, 0.2)  # not seen
    reference[5] = (60.0, 60.0, TIE)  # seen unless strict
    frames = reference[None].copy()
    frames[0, :, 0] += 3.0
    flow, mask = sparse_motion(reference, frames, (128, 96))
    assert flow.dtype == np.float32 and mask.dtype == np.float32
    for x, y in ((0, 10), (70, 0), (127, 40), (30, 95), (60, 60)):
        assert mask[0, y, x] == 1 and flow[0, y, x] == pytest.approx((3.0, 0.0)), (x, y)
    assert mask[0].sum() == 5
    assert sparse_motion(reference, frames, (128, 96), strict=True)[1][0, 60, 60] == 0
    assert sparse_motion(reference, frames, (128, 96), threshold=0.5)[1][0].sum() == 4
    assert sparse_motion(reference, frames, (128, 96), threshold=0.1)[1][0].sum() == 6


def test_dispose_inputs_clamp_positions_and_follow_each_frame() -> None:
    reference = np.zeros((133, 3), np.float32)
    reference[0] = (-5.0, 200.0, 1.0)  # clamped to x = 0
    frames = np.repeat(reference[None], 3, 0)
    frames[:, 0, 0] = (3.0, 6.0, 9.0)
    flow, mask = dispose_sparse_motion(reference, frames, (384, 384))
    assert [flow[t, 200, 0, 0] for t in range(3)] == pytest.approx([3.0, 6.0, 9.0])
    assert mask[:, 200, 0].tolist() == [1, 1, 1]
    frames[2, 0, 2] = 0.0  # unseen at the end of the last step only
    trajectory = dispose_trajectory_flow(reference, frames, (384, 384))
    assert trajectory.dtype == np.float32
    # step t writes at int(start): the reference (clamped to 0), then frame 0 (3), then frame 1 (6)
    assert trajectory[0, 200, 0, 0] > 0 and trajectory[1, 200, 3, 0] > 0
    assert not trajectory[2].any()  # step 1 -> 2 has an unseen end
    with pytest.raises(ValueError, match="unseen must be one of"):
        dispose_trajectory_flow(reference, frames, (384, 384), unseen="ignore")
