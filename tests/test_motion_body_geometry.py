"""The body field's geometry helpers against hand-computed values (no body model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from animate.body.camera import Camera
from animate.body.parts import NUM_PARTS
from animate.motion.body_field import (
    PART_PARENTS,
    falloff,
    interpolate,
    inverse_linear,
    nearest_pixel,
    offbody_reach,
    part_affines,
    part_neighbours,
    project,
    snap_keypoints,
)
from animate.pose.layout import FACE, L_WRIST, LEFT_HAND_ROOT, NOSE, R_WRIST, RIGHT_HAND_ROOT


def test_part_neighbours_are_the_kinematic_tree_plus_the_two_hips():
    near = part_neighbours()
    expected = np.eye(NUM_PARTS, dtype=bool)
    for child, parent in enumerate(PART_PARENTS):
        if parent >= 0:
            expected[child, parent] = expected[parent, child] = True
    expected[1, 2] = expected[2, 1] = True
    assert near.dtype == bool and np.array_equal(near, expected)
    assert near.sum() == NUM_PARTS + 2 * (NUM_PARTS - 1) + 2


def test_project_is_a_pinhole_with_depth_kept():
    camera = Camera(width=200, height=300, fx=100.0, fy=200.0, cx=50.0, cy=60.0)
    uv, depth = project(camera, np.array([[1.0, 2.0, 4.0], [0.0, 0.0, -1.0]]))
    assert uv.dtype == np.float32 and depth.dtype == np.float32
    assert uv[0].tolist() == [1 / 4 * 100 + 50, 2 / 4 * 200 + 60]
    assert uv[1].tolist() == [50.0, 60.0]  # behind the camera: divided by 1e-3, not by a negative depth
    assert depth.tolist() == [4.0, -1.0]
    # Batched (frames, vertices, 3); a depth under one unit divides as it is.
    uv, _ = project(camera, np.array([[[1.0, 2.0, 0.5], [2.0, 1.0, 4.0]]]))
    assert uv.shape == (1, 2, 2)
    assert uv[0].tolist() == [[2 * 100 + 50, 4 * 200 + 60], [0.5 * 100 + 50, 0.25 * 200 + 60]]


def test_interpolate_blends_three_vertices():
    values = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 20.0], [5.0, 5.0]])
    triangles = np.array([[0, 1, 2], [3, 1, 0]])
    bary = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    assert interpolate(values, triangles, bary).tolist() == [[3.0, 10.0], [5.0, 5.0]]


def test_part_affines_recover_each_part_and_keep_degenerate_ones():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 100, (40, 2))
    parts = np.repeat([3, 7], 20)
    parts[:2] = 5  # part 5: two points only
    a3 = np.array([[1.1, 0.2, 5.0], [-0.3, 0.9, -2.0]])
    a7 = np.array([[0.5, 0.0, 10.0], [0.0, 2.0, 0.0]])
    target = np.where((parts == 7)[:, None], source @ a7[:, :2].T + a7[:, 2], source @ a3[:, :2].T + a3[:, 2])
    out = part_affines(source, target, parts)
    np.testing.assert_allclose(out[3], a3, atol=1e-8)
    np.testing.assert_allclose(out[7], a7, atol=1e-8)
    identity = np.eye(2, 3)
    np.testing.assert_array_equal(out[5], identity)  # too few points
    three = part_affines(source[:3], source[:3] @ a3[:, :2].T + a3[:, 2], np.zeros(3, np.int64))
    np.testing.assert_allclose(three[0], a3, atol=1e-6)  # three points determine an affine map
    np.testing.assert_array_equal(out[0], identity)  # no points
    on_a_line = part_affines(np.array([[0.0, 0], [1, 1], [2, 2], [3, 3]]), np.zeros((4, 2)), np.full(4, 9))
    np.testing.assert_array_equal(on_a_line[9], identity)


def test_inverse_linear_inverts_and_refuses_near_singular_maps():
    affines = np.array(
        [[[2.0, 1.0, 9.0], [1.0, 3.0, 9.0]], [[0.05, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.049, 0, 0], [0, 1, 0]]]
    )
    out = inverse_linear(affines, max_stretch=100.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], np.array([[3.0, -1.0], [-1.0, 2.0]]) / 5, atol=1e-6)
    np.testing.assert_allclose(out[1], [[20.0, 0.0], [0.0, 1.0]], atol=1e-5)  # det 0.05: still inverted
    np.testing.assert_array_equal(out[2], np.eye(2))


def test_inverse_linear_clips_the_stretch_of_a_limb_seen_end_on():
    """A forearm pointing at the camera: its part map shrinks along the limb 5x (or stretches it 8x).
    By hand: the exact inverse diag(5, 1) R^T is clipped to diag(4, 1) R^T (at most 4x, at least 1/4x per
    direction, the same directions); a map within the limits is inverted exactly."""
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    rot = np.array([[c, -s], [s, c]])

    def affine(linear: np.ndarray) -> np.ndarray:
        return np.concatenate([linear, [[7.0], [-3.0]]], 1)

    shrink = rot @ np.diag([0.2, 1.0])  # along the limb (x before the turn) 5x shorter
    stretch = rot @ np.diag([8.0, 1.5])
    fine = rot @ np.diag([2.0, 0.5])
    out = inverse_linear(np.stack([affine(shrink), affine(stretch), affine(fine)]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], np.diag([4.0, 1.0]) @ rot.T, atol=1e-5)
    np.testing.assert_allclose(out[1], np.diag([0.25, 1 / 1.5]) @ rot.T, atol=1e-5)
    np.testing.assert_allclose(out[2], np.linalg.inv(fine), atol=1e-5)
    # An offset beside the limb goes back no further than 4x its length.
    offset = rot @ np.array([3.0, 0.0])
    assert np.linalg.norm(out[0] @ offset) == pytest.approx(12.0, abs=1e-4)


def test_falloff_is_one_then_a_cosine_to_zero():
    distance = np.array([0.0, 10.0, 15.0, 20.0, 30.0])
    assert falloff(distance, 10.0).dtype == np.float32
    assert falloff(distance, 10.0).tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0], abs=1e-6)
    assert falloff(np.array([12.5]), 10.0)[0] == pytest.approx(0.5 + 0.5 * math.cos(math.pi / 4))
    # A reach under one pixel counts as one pixel.
    assert falloff(np.array([1.0, 1.5, 2.0]), 0.2).tolist() == pytest.approx([1.0, 0.5, 0.0], abs=1e-6)


def test_nearest_pixel_labels_in_flatnonzero_order():
    mask = np.zeros((5, 6), bool)
    mask[1, 1] = mask[3, 4] = True
    distance, index = nearest_pixel(mask)
    assert distance[1, 1] == 0 and distance[3, 4] == 0
    assert index[1, 1] == 0 and index[3, 4] == 1  # flatnonzero order
    assert index[0, 0] == 0 and index[4, 5] == 1
    assert distance[1, 3] == pytest.approx(2.0, abs=0.05)


def test_offbody_reach_is_a_quantile_of_the_off_body_distances():
    body = np.zeros((10, 40), bool)
    body[:, :10] = True
    person = np.zeros_like(body)
    person[:, :30] = True  # off-body columns 10..29: distances 1..20
    assert offbody_reach(person, body, quantile=1.0) == pytest.approx(20.0, abs=0.1)
    assert offbody_reach(person, body, quantile=0.5) == pytest.approx(10.5, abs=0.1)
    assert offbody_reach(body, body) == 0.0
    assert offbody_reach(person, np.zeros_like(body)) == 0.0


def test_snap_keypoints_moves_hands_with_wrists_and_face_with_the_nose():
    keypoints = np.zeros((1, 133, 3), np.float32)
    keypoints[0, :, :2] = np.arange(133)[:, None]
    keypoints[0, :, 2] = 0.5
    body = keypoints[:, :23, :2] + np.array([3.0, -2.0], np.float32)
    body[0, L_WRIST] += (10, 0)
    body[0, R_WRIST] += (0, 20)
    body[0, NOSE] += (-5, -5)
    out = snap_keypoints(keypoints.astype(np.float64), body)
    assert out.dtype == np.float32
    assert np.array_equal(out[0, :23, :2], body[0])
    np.testing.assert_allclose(
        out[0, LEFT_HAND_ROOT : LEFT_HAND_ROOT + 21, :2] - keypoints[0, 91:112, :2], [[13, -2]] * 21
    )
    np.testing.assert_allclose(
        out[0, RIGHT_HAND_ROOT : RIGHT_HAND_ROOT + 21, :2] - keypoints[0, 112:, :2], [[3, 18]] * 21
    )
    np.testing.assert_allclose(out[0, FACE, :2] - keypoints[0, FACE, :2], [[-2, -7]] * 68)
    assert (out[..., 2] == 0.5).all()
    assert keypoints[0, 0, 0] == 0  # the input is not modified
