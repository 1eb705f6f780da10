"""Keypoint motion at its edges, against values worked out by hand: the trajectory blur's reach (DisPose's
kernel ends at 99 / 20 sigma = 4.95 sigma, not at SciPy's default 4), an explicit sigma, the blur width on
the downsampled grid, the seen rule at exactly 0.3 at either end of a step and for the reference, empty
steps or frames that do not end the loop, and positions below the image clamped onto its last row."""

from __future__ import annotations

import numpy as np
import pytest

from animate.motion.bundle import GuidanceConventions
from animate.motion.keypoint_flow import (
    conventional_trajectory,
    dispose_sparse_motion,
    dispose_trajectory_flow,
    sparse_motion,
    trajectory_flow,
)

TIE = np.float32(0.3)  # the threshold in the scores' own precision


def one_point(path) -> np.ndarray:
    frames = np.zeros((len(path), 133, 3), np.float32)
    for t, point in enumerate(path):
        frames[t, 0] = point
    return frames


def test_the_trajectory_blur_reaches_4_95_sigma():
    """sigma 5 px at 256: 5 x exp(-d^2 / 50) out to SciPy's radius int(24.75 + 0.5) = 25 px (24 px: 5 e^-11.5 =
    5.1e-5), zero from 26 px on (SciPy's default truncation would stop at 20 px)."""
    flow = trajectory_flow(one_point([(95, 100, 1), (100, 100, 1)]), (256, 256), downsample=1)
    for d in (21, 23, 24):
        assert flow[1, 100, 100 + d, 0] == pytest.approx(5 * np.exp(-(d**2) / 50), rel=1e-2), d
    assert flow[1, 100, 125, 0] > 0
    assert not flow[1, 100, 100 + 26 :].any() and not flow[1, 100, : 100 - 25].any()


def test_an_explicit_sigma_is_used():
    flow = trajectory_flow(one_point([(95, 100, 1), (100, 100, 1)]), (256, 256), sigma=3.0, downsample=1)
    assert flow[1, 100, 104, 0] == pytest.approx(5 * np.exp(-16 / 18), rel=1e-3)
    assert not flow[1, 100, 100 + 16 :].any()  # radius int(4.95 x 3 + 0.5) = 15 px


def test_the_blur_keeps_its_width_on_the_downsampled_grid():
    """1024 px: sigma 20 px, computed on a 4x smaller grid (sigma 5 there); 40 px away the flow is about
    e^-2 of the peak (a blur 4x too wide would keep nearly all of it)."""
    frames = one_point([(500, 512, 1), (512, 512, 1)])  # moves +12 px in x
    flow = trajectory_flow(frames, (1024, 1024))
    peak = flow[1, 512:516, 512:516, 0].max()
    assert peak == pytest.approx(12, rel=0.05)
    far = flow[1, 514, 514 + 40, 0]
    assert 0.05 * peak < far < 0.25 * peak  # exp(-1600 / 800) = 0.135


@pytest.mark.parametrize("tie_at", [0, 1])
def test_a_step_needs_both_ends_strictly_above_under_the_strict_rule(tie_at):
    path = [(95, 100, 1.0), (100, 100, 1.0)]
    frames = one_point(path)
    frames[tie_at, 0, 2] = TIE
    assert not trajectory_flow(frames, (256, 256), downsample=1, strict=True)[1].any()
    assert trajectory_flow(frames, (256, 256), downsample=1)[1, 100, 100, 0] == pytest.approx(5, abs=1e-4)
    rules = GuidanceConventions(seen="above")
    reference = frames[0]
    assert not conventional_trajectory(reference, frames, (256, 256), rules)[1].any()
    assert conventional_trajectory(reference, frames, (256, 256), GuidanceConventions())[1].any()


def test_sparse_motion_reads_the_reference_score_with_the_same_rule():
    reference = one_point([(40, 30, 1.0)])[0]
    frames = one_point([(46, 26, 1.0)])
    flow, mask = sparse_motion(reference, frames, (64, 64))
    assert flow[0, 30, 40].tolist() == [6.0, -4.0] and mask[0, 30, 40] == 1
    reference[0, 2] = TIE
    assert sparse_motion(reference, frames, (64, 64))[1].sum() == 1
    assert sparse_motion(reference, frames, (64, 64), strict=True)[1].sum() == 0
    reference[0, 2] = 0.1  # below the threshold: never seen
    assert sparse_motion(reference, frames, (64, 64))[1].sum() == 0
    assert sparse_motion(reference, frames, (64, 64), threshold=0.05)[1].sum() == 1


def test_a_frame_or_step_with_nothing_seen_does_not_end_the_loop():
    reference = one_point([(40, 30, 1.0)])[0]
    frames = one_point([(46, 26, 0.0), (50, 30, 1.0)])  # frame 0 unseen, frame 1 seen
    flow, mask = sparse_motion(reference, frames, (64, 64))
    assert mask[0].sum() == 0 and flow[1, 30, 40].tolist() == [10.0, 0.0]
    unseen_reference = reference.copy()
    unseen_reference[0, 2] = 0.0
    # DisPose's steps: reference -> frame 0 has an unseen start, frame 0 -> 1 too; frame 1 -> 2 is written
    frames = one_point([(46, 26, 1.0), (50, 30, 1.0), (52, 30, 1.0)])
    out = dispose_trajectory_flow(unseen_reference, frames, (64, 64))
    assert not out[0].any() and out[1].any() and out[2].any()


def test_positions_below_the_image_are_clamped_onto_its_last_row():
    """DisPose's ``pose2track`` clamps positions into the image: a point at y = 300 of a 256 px image
    moves exactly like one at y = 255."""
    size = (128, 256)
    reference = one_point([(60, 250, 1.0)])[0]
    below = one_point([(60, 300, 1.0), (70, 400, 1.0)])
    on_edge = one_point([(60, 255, 1.0), (70, 255, 1.0)])
    np.testing.assert_array_equal(
        dispose_trajectory_flow(reference, below, size), dispose_trajectory_flow(reference, on_edge, size)
    )
    for got, want in zip(
        dispose_sparse_motion(reference, below, size),
        dispose_sparse_motion(reference, on_edge, size),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
    start_below = one_point([(60, 300, 1.0)])[0]  # the reference itself below the image
    out = dispose_trajectory_flow(start_below, one_point([(70, 255, 1.0)]), size)
    assert out[0].any() and np.isfinite(out).all()
