"""Champ's guidance maps in Champ's conventions (fudan-generative-vision/champ @ 02e5533, UPSTREAM_PARITY.md
Champ 2 and 3): depth normalised per frame, body min..max -> 255..0 with the background 0 (its Blender
scene's Normalize + Invert), and the rules chosen whenever Champ's encoders are loaded. Expectations come from
the rule applied by hand to the depth values."""

from __future__ import annotations

import numpy as np
import pytest

from animate.body import Camera, Renderer
from animate.body.render import RenderedFrame
from animate.motion.bundle import GuidanceConventions


def _frame(depth: np.ndarray) -> RenderedFrame:
    h, w = depth.shape
    mask = depth > 0
    return RenderedFrame(
        mask=mask,
        depth=depth.astype(np.float32),
        normal=np.zeros((h, w, 3), np.float32),
        face=np.where(mask, 0, -1).astype(np.int32),
        bary=np.zeros((h, w, 3), np.float32),
        part=np.where(mask, 0, -1).astype(np.int16),
    )


def test_champ_depth_on_a_synthetic_buffer():
    depth = np.array([[0.0, 2.0, 2.5], [3.0, 0.0, 2.25]])
    champ = _frame(depth).depth_map("champ")
    # 255 * (1 - (z - 2) / (3 - 2)), rounded half up: 255, 127.5 -> 128, 0, 191.25 -> 191; background 0
    np.testing.assert_array_equal(champ, [[0, 255, 128], [0, 0, 191]])
    # ours keeps the far body apart from the background: 255 .. 64 over at least 0.5 m
    ours = _frame(depth).depth_map()
    np.testing.assert_array_equal(ours, [[0, 255, 160], [64, 0, 207]])
    assert np.array_equal(ours, _frame(depth).depth_image)
    with pytest.raises(ValueError, match="depth convention"):
        _frame(depth).depth_map("metric")


def test_champ_depth_of_a_rendered_tilted_quad():
    # a quad 2 m away, leaning back: its top is farther than its bottom
    vertices = np.array([[-0.4, -0.4, 2.3], [0.4, -0.4, 2.3], [0.4, 0.4, 1.7], [-0.4, 0.4, 1.7]], np.float32)
    faces = np.array([[0, 2, 1], [0, 3, 2]], np.int32)
    frame = Renderer(faces, np.zeros(4, np.int64)).render(vertices, Camera.default(48, 48))
    champ = frame.depth_map("champ")
    z = frame.depth[frame.mask]
    far, near = z.max(), z.min()
    assert champ[frame.depth == far].tolist() == [0] * int((frame.depth == far).sum())
    assert (champ[frame.depth == near] == 255).all()
    assert (champ[~frame.mask] == 0).all() and frame.mask.sum() > 100
    expected = np.floor(255 * (1 - (z.astype(np.float64) - near) / (far - near)) + 0.5)
    np.testing.assert_array_equal(champ[frame.mask], expected)


def test_champ_rules_whenever_its_encoders_are_loaded():
    rules = GuidanceConventions.for_networks(champ=("depth", "normal", "semantic", "skeleton"))
    assert (rules.depth, rules.skeleton) == ("champ", "dwpose")
    only_normal = GuidanceConventions.for_networks(champ=("normal",))
    assert (only_normal.depth, only_normal.skeleton) == ("floor64", "pose_images")
