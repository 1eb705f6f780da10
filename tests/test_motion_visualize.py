"""Flow colours against the Middlebury colour code written out here in float64 (Baker et al.'s
``computeColor``: a 55-colour wheel of segments 15, 6, 4, 11, 13, 6; hue from atan2(-v, -u); saturation the
magnitude over the largest one), colours worked out by hand for the four axis directions, and the preview's
stroke sizes."""

from __future__ import annotations

import numpy as np
import pytest

from animate.motion.visualize import PREVIEW_BONES, color_wheel, flow_to_color, motion_preview

SEGMENTS = (15, 6, 4, 11, 13, 6)  # red-yellow, yellow-green, green-cyan, cyan-blue, blue-magenta, magenta-red


def reference_wheel() -> np.ndarray:
    rows = []
    ry, yg, gc, cb, bm, mr = SEGMENTS
    rows += [(1, i / ry, 0) for i in range(ry)]
    rows += [(1 - i / yg, 1, 0) for i in range(yg)]
    rows += [(0, 1, i / gc) for i in range(gc)]
    rows += [(0, 1 - i / cb, 1) for i in range(cb)]
    rows += [(i / bm, 0, 1) for i in range(bm)]
    rows += [(1, 0, 1 - i / mr) for i in range(mr)]
    return np.array(rows, np.float64)


def reference_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    u, v = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)
    rad = np.hypot(u, v)
    scale = rad.max() if max_magnitude is None else max_magnitude
    rad = np.clip(rad / max(scale, 1e-6), 0, 1)
    wheel = reference_wheel()
    n = len(wheel)
    fk = (np.arctan2(0.0 - v, 0.0 - u) / np.pi + 1) / 2 * (n - 1)  # 0.0 - v: no -0.0
    k0 = np.floor(fk).astype(int)
    k1 = (k0 + 1) % n
    f = (fk - k0)[..., None]
    colour = (1 - f) * wheel[k0] + f * wheel[k1]
    colour = 1 - rad[..., None] * (1 - colour)
    return np.clip(np.floor(colour * 255 + 0.5), 0, 255)


def test_the_wheel_is_the_middlebury_wheel():
    wheel = color_wheel()
    assert wheel.shape == (55, 3)
    np.testing.assert_allclose(wheel, reference_wheel(), atol=1e-12)


@pytest.mark.parametrize(
    ("uv", "rgb"),
    [
        ((-1, 0), (0, 209, 255)),  # -u = 1: angle 0, wheel position 27 = cyan-blue step 2: (0, 1 - 2/11, 1)
        ((1, 0), (255, 0, 43)),  # angle pi: position 54 = magenta-red step 5: (1, 0, 1/6)
        ((0, -1), None),  # quarter turns: by hand in test_quarter_turns_by_hand
        ((0, 1), None),
    ],
)
def test_axis_directions_at_full_magnitude(uv, rgb):
    flow = np.zeros((1, 2, 2), np.float32)
    flow[0, 0] = uv  # the other pixel is still: scale = this vector's length
    out = flow_to_color(flow)
    expected = reference_color(flow)[0, 0]
    assert tuple(out[0, 1]) == (255, 255, 255)  # no motion is white
    np.testing.assert_allclose(out[0, 0], expected, atol=1)
    if rgb is not None:  # exact hand values where the angle is exact
        assert tuple(out[0, 0]) == rgb


def test_quarter_turns_by_hand():
    """(0, -1): -v = 1, atan2(1, 0) = pi / 2, position (1/2 + 1) / 2 x 54 = 40.5, in blue-magenta (36..48)
    at step 4.5: halfway between (4/13, 0, 1) and (5/13, 0, 1) -> red 4.5/13 x 255 = 88.3 -> 88.
    (0, 1): atan2(-1, 0) = -pi / 2, position 13.5, red-yellow steps 13 and 14: green 13.5/15 x 255 = 229.5."""
    out = flow_to_color(np.array([[[0, -1], [0, 1]]], np.float32))
    assert abs(int(out[0, 0, 0]) - 88) <= 1 and tuple(out[0, 0, 1:]) == (0, 255)
    assert out[0, 1, 0] == 255 and abs(int(out[0, 1, 1]) - 230) <= 1 and out[0, 1, 2] == 0


def test_random_flows_match_the_reference_code():
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 3, (40, 50, 2)).astype(np.float32)
    flow[0, 0] = 0
    out = flow_to_color(flow)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - reference_color(flow))
    assert diff.max() <= 3 and diff.mean() < 0.3  # OpenCV's angle is good to about 0.3 degrees
    capped = flow_to_color(flow, max_magnitude=2.0)
    diff = np.abs(capped.astype(int) - reference_color(flow, 2.0))
    assert diff.max() <= 3 and diff.mean() < 0.3


def test_saturation_is_the_magnitude_over_the_largest():
    flow = np.zeros((1, 4, 2), np.float32)
    flow[0, :, 0] = [-4, -2, -1, 0]  # one direction (cyan-blue (0, 209, 255) at full), lengths 4, 2, 1, 0
    out = flow_to_color(flow).astype(int)
    # 1 - r (1 - c): red 255 (1 - r), green 255 - r (255 - 208.6), blue 255
    for x, r in enumerate([1, 0.5, 0.25, 0]):
        assert abs(out[0, x, 0] - 255 * (1 - r)) <= 0.51
        assert abs(out[0, x, 1] - (255 - r * (255 - 255 * 9 / 11))) <= 0.51
        assert out[0, x, 2] == 255
    fixed = flow_to_color(flow, max_magnitude=8.0).astype(int)
    assert abs(fixed[0, 0, 0] - 127.5) <= 0.51  # 4 of 8: half saturated
    assert tuple(flow_to_color(flow, max_magnitude=1.0)[0, 1]) == (0, 209, 255)  # clipped at full
    still = flow_to_color(np.zeros((3, 3, 2), np.float32))
    assert still.min() == 255  # nothing moves: white, no division by zero
    tiny = flow_to_color(flow * 1e-9, max_magnitude=0.0)
    assert tiny.min() == 255 or tiny.min() >= 254  # a zero cap is floored, not a division by zero


def test_preview_strokes_scale_with_the_picture():
    """thickness = max(2, round(min(W, H) / 120)): 2 below 300 px, 4 at 480 px, 5 at 600 px, 6 at 660; the bone is an
    anti-aliased line of that thickness, the joints anti-aliased discs of radius thickness + 1, drawn here
    with OpenCV directly on a white picture (no motion)."""
    import cv2

    # 660 / 120 = 5.5 rounds to 6 (Python rounds halves to even); 540 / 120 = 4.5 rounds to 4
    cases = (
        ((64, 64), 2),
        ((480, 640), 4),
        ((800, 600), 5),
        ((300, 900), 2),
        ((700, 660), 6),
        ((540, 560), 4),
    )
    for (width, height), thickness in cases:
        a, b = (width // 5, height // 2), (4 * width // 5, height // 3)
        keypoints = np.zeros((133, 3), np.float32)
        keypoints[6] = (*a, 0.9)  # right shoulder
        keypoints[8] = (*b, 0.9)  # right elbow
        out = motion_preview(np.zeros((height, width, 2), np.float32), keypoints)
        expected = np.full((height, width, 3), 255, np.uint8)
        cv2.line(expected, a, b, PREVIEW_BONES, thickness, cv2.LINE_AA)
        for point in (a, b):
            cv2.circle(expected, point, thickness + 1, PREVIEW_BONES, -1, cv2.LINE_AA)
        np.testing.assert_array_equal(out, expected, err_msg=f"{width}x{height}")


def test_preview_threshold_is_at_least():
    keypoints = np.zeros((133, 3), np.float32)
    keypoints[6] = (10, 20, 0.5)
    keypoints[8] = (50, 20, 0.5)
    flow = np.zeros((64, 64, 2), np.float32)
    assert tuple(motion_preview(flow, keypoints, threshold=0.5)[20, 30]) == PREVIEW_BONES
    assert motion_preview(flow, keypoints, threshold=0.51).min() == 255


def test_a_float64_flow_and_a_small_largest_motion():
    """float64 flows are read as float32; when the largest motion is under a pixel it still sets full
    saturation (the 1e-6 floor only guards against a still frame)."""
    flow = np.zeros((1, 3, 2), np.float64)
    flow[0, 0] = (-0.5, 0)  # the largest: full cyan-blue
    flow[0, 1] = (-0.25, 0)  # half of it
    out = flow_to_color(flow).astype(int)
    assert tuple(out[0, 0]) == (0, 209, 255)
    assert abs(out[0, 1, 0] - 127.5) <= 0.51 and out[0, 2].tolist() == [255, 255, 255]
    np.testing.assert_array_equal(flow_to_color(flow.astype(np.float32)), out)
    tiny = np.zeros((1, 2, 2), np.float32)
    tiny[0, 0] = (0, 1e-3)  # a thousandth of a pixel is still the largest motion: full colour
    assert tuple(flow_to_color(tiny)[0, 0]) == tuple(flow_to_color(tiny * 1000)[0, 0])
