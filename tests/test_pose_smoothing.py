"""The confidence-aware One Euro filter against a scalar reference loop written from the paper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from animate.pose.smoothing import SmoothingOptions, smooth_keypoints


def reference_one_euro(track: np.ndarray, fps: float, scale: float, o: SmoothingOptions) -> np.ndarray:
    """One keypoint's (T, 3) track, one frame at a time (Casiez et al. 2012, scores scale the step)."""

    def alpha(cutoff: float) -> float:
        return 1.0 / (1.0 + (1.0 / (2.0 * math.pi * cutoff)) * fps)

    out = track.astype(np.float64).copy()
    x_hat = dx_hat = None
    for t, (x, y, score) in enumerate(track.astype(np.float64)):
        score = min(max(score, 0.0), 1.0)
        point = np.array([x, y]) / scale
        if score < o.threshold:
            x_hat = None  # lost: the filter restarts when the keypoint returns
            continue
        if x_hat is None:
            x_hat, dx_hat = point, np.zeros(2)
            continue
        dx_hat = dx_hat + alpha(o.d_cutoff) * ((point - x_hat) * fps - dx_hat)
        cutoff = o.min_cutoff + o.beta * math.hypot(*dx_hat)
        x_hat = x_hat + alpha(cutoff) * score**o.confidence_power * (point - x_hat)
        out[t, :2] = x_hat * scale
    return out


@pytest.fixture
def tracks():
    """Two keypoints over 30 frames: a noisy walk, and one that drops out (score 0.1) mid-way."""
    rng = np.random.default_rng(0)
    t = np.arange(30)
    a = np.stack([100 + 8 * t + rng.normal(0, 3, 30), 200 + rng.normal(0, 3, 30), rng.uniform(0.4, 1, 30)], 1)
    b = np.stack([300 + 50 * np.sin(t / 3), 100 + 2 * t, np.full(30, 0.9)], 1)
    b[10:14, 2] = 0.1
    return np.stack([a, b], 1).astype(np.float32)  # (T, K, 3)


@pytest.mark.parametrize(
    "options",
    [
        SmoothingOptions(bidirectional=False),
        SmoothingOptions(bidirectional=False, min_cutoff=0.5, beta=1.0, d_cutoff=2.0, confidence_power=2.0),
        SmoothingOptions(bidirectional=False, threshold=0.95),
    ],
)
def test_forward_pass_equals_the_reference(tracks, options):
    out = smooth_keypoints(tracks, fps=25.0, scale=480.0, options=options)
    for k in range(tracks.shape[1]):
        expected = reference_one_euro(tracks[:, k], 25.0, 480.0, options)
        np.testing.assert_allclose(out[:, k], expected, rtol=0, atol=2e-3)


def test_bidirectional_is_the_mean_of_both_passes(tracks):
    options = SmoothingOptions()
    out = smooth_keypoints(tracks, fps=30.0, scale=480.0, options=options)
    for k in range(tracks.shape[1]):
        forward = reference_one_euro(tracks[:, k], 30.0, 480.0, options)
        backward = reference_one_euro(tracks[::-1, k], 30.0, 480.0, options)[::-1]
        np.testing.assert_allclose(out[:, k, :2], (forward[:, :2] + backward[:, :2]) / 2, atol=2e-3)
        assert out[:, k, 2].tolist() == tracks[:, k, 2].tolist()  # scores unchanged


def test_scale_makes_the_filter_resolution_free(tracks):
    # The same motion at twice the resolution is smoothed to exactly twice the coordinates.
    doubled = tracks.copy()
    doubled[..., :2] *= 2
    one = smooth_keypoints(tracks, 25.0, 480.0)
    two = smooth_keypoints(doubled, 25.0, 960.0)
    np.testing.assert_allclose(two[..., :2], 2 * one[..., :2], rtol=1e-5, atol=1e-3)


def test_nothing_to_filter_returns_the_input():
    one = np.array([[[10.0, 20.0, 0.9]]], np.float32)
    assert smooth_keypoints(one, 25.0, 480.0).tolist() == one.tolist()
    two = np.array([[[10.0, 20.0, 0.9]], [[30.0, 40.0, 0.9]]], np.float32)
    assert smooth_keypoints(two, 0.0, 480.0).tolist() == two.tolist()


def test_unknown_scale_measures_in_pixels(tracks):
    options = SmoothingOptions(bidirectional=False)
    expected = smooth_keypoints(tracks, 25.0, 1.0, options)
    assert np.array_equal(smooth_keypoints(tracks, 25.0, 0.0, options), expected)
    np.testing.assert_allclose(
        expected[:, 0], reference_one_euro(tracks[:, 0], 25.0, 1.0, options), atol=2e-3
    )


def test_edges_follow_the_rule():
    # Two frames at 1 fps and a sub-pixel scale are filtered; a score exactly at the threshold counts as
    # seen; scores outside 0..1 act as 0 and 1; float64 input comes back as float32.
    options = SmoothingOptions(bidirectional=False, threshold=0.5)
    two = np.array([[[10.0, 20.0, 0.5]], [[30.0, 60.0, 0.5]]])
    out = smooth_keypoints(two, 1.0, 0.5, options)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], reference_one_euro(two[:, 0], 1.0, 0.5, options), atol=1e-4)
    assert out[1, 0, 0] != 30.0
    clipped = two.copy()
    clipped[:, 0, 2] = [2.0, 2.0]
    ones = two.copy()
    ones[:, 0, 2] = 1.0
    np.testing.assert_array_equal(
        smooth_keypoints(clipped, 1.0, 0.5, options)[..., :2],
        smooth_keypoints(ones, 1.0, 0.5, options)[..., :2],
    )
    anything = SmoothingOptions(bidirectional=False, threshold=0.0)
    negative = two.copy()
    negative[:, 0, 2] = [1.0, -1.0]  # seen at threshold 0, with weight 0: the estimate stays put
    assert smooth_keypoints(negative, 1.0, 0.5, anything)[1, 0, :2].tolist() == [10.0, 20.0]
