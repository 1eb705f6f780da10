"""The 2D skeleton dense field: the fallback when neither CMP nor a body fit gives one."""

from __future__ import annotations

import numpy as np
import pytest

from animate.motion.skeleton_field import similarity, skeleton_dense_flow


def test_skeleton_dense_flow_moves_the_person_with_the_keypoints():
    reference = np.zeros((133, 3), np.float32)
    body = [(32, 10), (30, 8), (34, 8), (28, 9), (36, 9), (24, 18), (40, 18), (22, 28), (42, 28), (21, 36),
            (43, 36), (27, 40), (37, 40), (27, 50), (37, 50), (27, 60), (37, 60)]  # fmt: skip
    reference[:17, :2], reference[:17, 2] = body, 1.0
    moved = reference.copy()
    moved[:, :2] += (5.0, -3.0)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:61, 20:45] = 255
    flow = skeleton_dense_flow(reference, np.stack([reference, moved]), mask)
    assert flow.shape == (2, 64, 64, 2) and np.abs(flow[0]).max() < 1e-4
    person = mask > 127
    np.testing.assert_allclose(flow[1][person], np.broadcast_to([5.0, -3.0], (person.sum(), 2)), atol=1e-4)
    assert not flow[1][~person].any()
    # no person, or no usable bones: no motion
    assert not skeleton_dense_flow(reference, np.stack([moved]), np.zeros_like(mask)).any()
    assert not skeleton_dense_flow(np.zeros_like(reference), np.stack([moved]), mask).any()


def _hand_similarity(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = scale * np.cos(np.radians(degrees)), scale * np.sin(np.radians(degrees))
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


POINTS = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 20.0], [-5.0, 7.0], [3.0, -9.0]])


def test_similarity_recovers_a_hand_made_similarity_and_never_reflects():
    truth = _hand_similarity(1.25, 30.0, (7.0, -4.0))
    moved = POINTS @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(similarity(POINTS, moved, (0.5, 2.0)), truth, atol=1e-9)
    # A mirror image has no proper similarity: the fit stays a rotation (determinant > 0).
    mirrored = POINTS * [-1.0, 1.0]
    assert np.linalg.det(similarity(POINTS, mirrored, (0.0, 10.0))[:, :2]) > 0


@pytest.mark.parametrize(("scale", "clamped"), [(3.0, 1.4), (0.2, 0.7)])
def test_similarity_clamps_the_scale_and_maps_the_centroids(scale, clamped):
    truth = _hand_similarity(scale, -50.0, (12.0, 3.0))
    moved = POINTS @ truth[:, :2].T + truth[:, 2]
    fitted = similarity(POINTS, moved, (0.7, 1.4))
    np.testing.assert_allclose(fitted[:, :2], _hand_similarity(clamped, -50.0, (0, 0))[:, :2], atol=1e-9)
    np.testing.assert_allclose(fitted[:, :2] @ POINTS.mean(0) + fitted[:, 2], moved.mean(0), atol=1e-9)


def test_similarity_of_coincident_points_is_the_smallest_scale_moving_the_centroid():
    # One point (or all at one place) fixes no rotation or scale: no rotation, the lowest allowed scale.
    fitted = similarity(np.array([[4.0, 6.0], [4.0, 6.0]]), np.array([[10.0, 1.0], [12.0, 3.0]]), (0.7, 1.4))
    np.testing.assert_allclose(fitted, [[0.7, 0.0, 11.0 - 2.8], [0.0, 0.7, 2.0 - 4.2]], atol=1e-12)
    single = similarity(np.array([[4.0, 6.0]]), np.array([[10.0, 1.0]]), (0.7, 1.4))
    np.testing.assert_allclose(single, [[0.7, 0.0, 10.0 - 2.8], [0.0, 0.7, 1.0 - 4.2]], atol=1e-12)
    # Targets that coincide: scale 0 clamped up, no rotation.
    flat = similarity(POINTS, np.zeros_like(POINTS), (0.7, 1.4))
    np.testing.assert_allclose(flat[:, :2], 0.7 * np.eye(2), atol=1e-12)
