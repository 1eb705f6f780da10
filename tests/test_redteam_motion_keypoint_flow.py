"""Red team (issue 20): keypoint motion is written at the pixel NEAREST a keypoint's sub-pixel position
(pixel ``x`` is centred on coordinate ``x``, as the keypoints' own pixel coordinates are), for both the sparse
(CMP) motion and the trajectory flow; a floor would move every keypoint with a fraction >= 0.5 by a pixel."""

from __future__ import annotations

import numpy as np

from animate.motion.keypoint_flow import sparse_motion, trajectory_flow


def test_sparse_motion_is_written_at_the_nearest_pixel_of_the_reference_position():
    reference = np.array([[10.6, 20.4, 1.0], [30.2, 5.7, 1.0]], np.float32)
    frames = np.array([[[12.6, 21.4, 1.0], [29.2, 8.7, 1.0]]], np.float32)
    flow, mask = sparse_motion(reference, frames, (48, 32))
    # nearest pixels by hand: (10.6, 20.4) -> x 11, y 20; (30.2, 5.7) -> x 30, y 6
    assert np.argwhere(mask[0] > 0).tolist() == [[6, 30], [20, 11]]
    np.testing.assert_allclose(flow[0, 20, 11], [2.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(flow[0, 6, 30], [-1.0, 3.0], atol=1e-5)


def test_trajectory_flow_peaks_at_the_nearest_pixel_of_the_end_point():
    frames = np.array([[[40.0, 30.0, 1.0]], [[43.6, 30.6, 1.0]]], np.float32)
    flow = trajectory_flow(frames, (96, 64), sigma=1.5, downsample=1)
    magnitude = np.linalg.norm(flow[1], axis=-1)
    y, x = np.unravel_index(np.argmax(magnitude), magnitude.shape)
    assert (x, y) == (44, 31)  # rint(43.6), rint(30.6)
    np.testing.assert_allclose(flow[1, y, x], [3.6, 0.6], atol=1e-4)


def test_the_downsampled_trajectory_blur_is_not_biased_towards_the_bottom_right():
    """At 1024 px the blur runs on a 4x smaller grid; over four consecutive end positions (one small cell)
    the flow's peak sits on average where the keypoints are (a cell chosen by rounding y / 4 puts it about
    1.5 px right of and below them)."""
    offsets = []
    for shift in range(4):
        end = 300.0 + shift
        frames = np.array([[[end - 3, end - 3, 1.0]], [[end, end, 1.0]]], np.float32)
        magnitude = np.linalg.norm(trajectory_flow(frames, (1024, 576))[1], axis=-1)
        weight = np.clip(magnitude - 0.9 * magnitude.max(), 0, None)
        ys, xs = np.indices(weight.shape)
        offsets.append(((xs * weight).sum() / weight.sum() - end, (ys * weight).sum() / weight.sum() - end))
    mean_x, mean_y = np.mean(offsets, axis=0)
    assert abs(mean_x) < 0.25 and abs(mean_y) < 0.25, offsets
