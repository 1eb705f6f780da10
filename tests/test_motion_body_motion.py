"""BodyMotion on the Anny body: chunked posing, another track, projected keypoints, renderer size."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_motion_body_field import anny, body_track, synthetic_motion  # noqa: F401 - the fixture

from animate.body import Camera

WAVE = [{"left_shoulder": (0.0, 0.0, -0.3 * t)} for t in range(5)]  # frame 0 is the rest pose


def test_vertices_in_chunks_equal_the_whole_clip(anny):  # noqa: F811
    motion = synthetic_motion(anny, {}, WAVE)
    whole = motion.vertices(0, 5)
    assert whole.shape == (5, len(motion.reference_vertices), 3) and whole.dtype == np.float32
    chunked = list(motion.iter_vertices(chunk=2))
    assert len(chunked) == 5
    np.testing.assert_allclose(np.stack(chunked), whole, atol=1e-5)
    assert not np.allclose(whole[0], whole[4])  # the arm moved


def test_keypoints_follow_a_sideways_step_by_the_pinhole_rule(anny):  # noqa: F811
    # The same pose 0.1 m further right, about 2.8 m away: each keypoint moves f * 0.1 / z px sideways
    # (z within the body's depth around 2.8 m) and not at all vertically (y and z are unchanged).
    camera = Camera.default(288, 512)
    motion = synthetic_motion(anny, {}, [{}, {}], transl=[(0.0, 0.0, 2.8), (0.1, 0.0, 2.8)])
    keypoints = motion.keypoints()
    assert keypoints.shape == (2, 23, 2)
    shift = keypoints[1] - keypoints[0]
    assert (shift[:, 0] > camera.fx * 0.1 / 3.2).all() and (shift[:, 0] < camera.fx * 0.1 / 2.4).all()
    np.testing.assert_allclose(shift[:, 1], 0.0, atol=1e-3)


def test_with_track_keeps_the_reference_and_refuses_another_shape(anny):  # noqa: F811
    motion = synthetic_motion(anny, {}, WAVE)
    reference = motion.reference_vertices  # cached
    still = body_track(anny, [{}] * 3, motion.camera)
    other = motion.with_track(still)
    assert other.num_frames == 3 and other.track is still and other.reference is motion.reference
    assert other.camera == motion.camera and other.body is motion.body
    assert other.reference_vertices is reference  # the reference cache travels along
    np.testing.assert_allclose(other.vertices(0, 1)[0], motion.vertices(0, 1)[0], atol=1e-5)  # both at rest
    wider = replace(still, shape=still.shape + 0.5)
    with pytest.raises(ValueError) as excinfo:
        motion.with_track(wider)
    assert str(excinfo.value) == "the track's body shape differs from the reference's"


def test_renderer_at_a_smaller_scale_uses_the_resized_camera(anny):  # noqa: F811
    motion = synthetic_motion(anny, {}, [{}])
    _, same = motion.renderer()
    assert same == motion.camera
    _, half = motion.renderer(scale=2)
    assert half == motion.camera.resized(144, 256)
    assert motion.size == (288, 512)
