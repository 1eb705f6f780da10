from __future__ import annotations

import numpy as np
import pytest

from animate.motion import flow_to_color, sparse_motion, trajectory_flow, trajectory_sigma


def _keypoints(n_frames: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    reference = np.zeros((133, 3), np.float32)
    reference[:17, :2] = rng.uniform(10, 100, (17, 2))
    reference[:17, 2] = 1.0
    frames = np.repeat(reference[None], n_frames, 0)
    return reference, frames


def test_sparse_motion_written_at_reference_positions():
    reference, frames = _keypoints()
    frames[1, :17, 0] += 5
    frames[2, :17, 1] -= 7
    frames[2, 3, 2] = 0.0  # keypoint 3 lost in frame 2
    flow, mask = sparse_motion(reference, frames, (128, 128))
    assert flow.shape == (3, 128, 128, 2) and mask.shape == (3, 128, 128)
    x, y = np.rint(reference[0, :2]).astype(int)
    assert tuple(flow[1, y, x]) == (5.0, 0.0) and tuple(flow[2, y, x]) == (0.0, -7.0)
    assert mask[0].sum() == mask[1].sum() == 17 and mask[2].sum() == 16
    assert np.all(flow[:, mask[0] == 0] == 0)
    # Frame 0 equals the reference: the displacement is zero everywhere.
    assert not flow[0].any()


def test_trajectory_flow_is_blurred_and_follows_motion():
    _, frames = _keypoints(4)
    frames[1, :17, 0] += 4
    frames[2, :17, 0] += 4  # no motion between 1 and 2
    frames[3, :17, 1] += 6
    size = (256, 256)
    flow = trajectory_flow(frames, size)
    assert flow.shape == (4, 256, 256, 2)
    assert not flow[0].any() and not flow[2].any()
    # The peak carries the full displacement; the blur spreads it well beyond one pixel.
    assert flow[1, ..., 0].max() == pytest.approx(4.0, rel=0.05)
    assert flow[3, ..., 1].max() == pytest.approx(6.0, rel=0.05)
    assert (np.abs(flow[1, ..., 0]) > 0.4).sum() > 17 * 50
    assert np.abs(flow[1, ..., 1]).max() < 1e-4


def test_trajectory_sigma_scales_with_resolution():
    assert trajectory_sigma((576, 1024)) == pytest.approx(20.0)
    assert trajectory_sigma((288, 512)) == pytest.approx(10.0)


def test_flow_colours():
    flow = np.zeros((3, 4, 2), np.float32)
    flow[1, 1] = (1.0, 0.0)
    flow[2, 2] = (-1.0, 0.0)
    colours = flow_to_color(flow)
    assert tuple(colours[0, 0]) == (255, 255, 255)  # no motion is white
    # Opposite directions get different, saturated colours.
    assert not np.array_equal(colours[1, 1], colours[2, 2])
    assert colours[1, 1].min() < 40 and colours[2, 2].min() < 40
