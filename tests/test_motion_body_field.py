"""The body's dense motion field, on bodies posed and rendered here (Anny + the ray-cast renderer)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from animate.body import MIRROR_PART, Camera, load_anny
from animate.body.fit import BodyTrack
from animate.motion.body_field import (
    BodyMotion,
    DenseField,
    interpolate,
    nearest_pixel,
    project,
    snap_keypoints,
)
from animate.pose.layout import FACE, L_WRIST, LEFT_HAND_ROOT, NOSE

FACING_CAMERA = [np.pi / 2, 0.0, 0.0]  # Anny's canonical frame (z up, facing -y) -> upright, facing us
#: Left arm down and across the belly: it hides part of the torso from the camera.
ARM_ACROSS = {"left_shoulder": (0.0, 1.2, 0.0)}
ARM_RAISED = {"left_shoulder": (0.0, 0.0, -1.2), "right_elbow": (0.0, 0.0, 0.8)}


@pytest.fixture(scope="session")
def anny():
    return load_anny()


def body_track(anny, poses, camera, roots=None, transl=None) -> BodyTrack:
    """A track of the average Anny body in these poses ({joint name: axis-angle} per frame)."""
    names = anny.joint_names
    pose = np.zeros((len(poses), len(names), 3), np.float32)
    for t, joints in enumerate(poses):
        for name, value in joints.items():
            pose[t, names.index(name)] = value
    root = np.array(roots if roots is not None else [FACING_CAMERA] * len(poses), np.float32)
    shift = np.array(transl if transl is not None else [(0.0, 0.0, 2.8)] * len(poses), np.float32)
    return BodyTrack("anny", anny.default_shape(), root, pose, shift, camera)


def synthetic_motion(anny, reference_pose, frame_poses, size=(288, 512), roots=None, transl=None):
    camera = Camera.default(*size)
    reference = body_track(anny, [reference_pose], camera)
    return BodyMotion(anny, reference, body_track(anny, frame_poses, camera, roots, transl), camera)


def test_dense_flow_lands_where_the_same_surface_point_renders(anny):
    turned = (np.pi / 2, 0.0, 0.35)  # a quarter-ish turn about the vertical, arms moved, stepped aside
    motion = synthetic_motion(anny, {}, [ARM_RAISED], roots=[turned], transl=[(0.15, 0.05, 2.9)])
    reference = motion.reference_render
    field = DenseField(motion, reference.mask_image)
    vertices = motion.vertices(0, 1)[0]
    flow = field.flow(vertices)
    renderer, camera = motion.renderer()
    frame = renderer.render(vertices, camera)

    ys, xs = np.nonzero(reference.mask)
    landing = np.rint(np.stack([xs, ys], 1) + flow[ys, xs]).astype(int)
    inside = (landing >= 0).all(1) & (landing[:, 0] < camera.width) & (landing[:, 1] < camera.height)
    ys, xs, landing = ys[inside], xs[inside], landing[inside]
    # The reference pixel's surface point in frame t, and whether frame t shows it (not hidden).
    triangles = anny.faces[reference.face[ys, xs]]
    depth = interpolate(vertices, triangles, reference.bary[ys, xs])[:, 2]
    shown = frame.depth[landing[:, 1], landing[:, 0]]
    visible = frame.mask[landing[:, 1], landing[:, 0]] & (np.abs(shown - depth) < 0.01)
    assert visible.mean() > 0.5  # a turned body still shows most of its front
    # Where it is visible, the pixel it lands on renders the same triangle or one sharing a vertex.
    landed = anny.faces[frame.face[landing[visible, 1], landing[visible, 0]]]
    shares = (triangles[visible][:, :, None] == landed[:, None, :]).any((1, 2))
    assert shares.mean() > 0.97, shares.mean()
    # And its position is the surface point's projection, to the pixel.
    uv, _ = project(
        camera, interpolate(vertices, triangles[visible], reference.bary[ys[visible], xs[visible]])
    )
    moved = np.stack([xs[visible], ys[visible]], 1) + flow[ys[visible], xs[visible]]
    np.testing.assert_allclose(moved, uv - 0.5, atol=1e-3)


def test_off_body_pixels_follow_the_body_with_a_falloff_and_the_background_stays(anny):
    motion = synthetic_motion(anny, {}, [{}], transl=[(0.12, 0.0, 2.8)])  # a step sideways
    body = motion.reference_render.mask
    # The "person": the body with 10 px of clothes and hair around it, and a stray blob far away.
    person = cv2.dilate(body.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (21, 21))) > 0
    person[10:20, 10:20] = True
    field = DenseField(motion, person.astype(np.uint8) * 255, reach=6.0)
    flow = field.flow(motion.vertices(0, 1)[0])
    shift = np.median(flow[body][:, 0])
    assert shift > 5 and np.abs(flow[body][:, 1]).max() < 1.0
    distance, nearest = nearest_pixel(body)
    near = person & ~body & (distance <= 6)
    # Rigid with the nearest body pixel (a pure step: the part's local 2D motion is a translation).
    nearest_flow = flow.reshape(-1, 2)[np.flatnonzero(body)[nearest[near]]]
    np.testing.assert_allclose(flow[near], nearest_flow, atol=0.5)
    fading = person & (distance > 7) & (distance < 11)
    assert (np.abs(flow[fading][:, 0]) < 0.99 * shift).all() and (np.abs(flow[fading][:, 0]) > 0).all()
    assert not flow[~person].any()  # background
    assert not flow[10:20, 10:20].any()  # person pixels far from the body


def test_mirror_vertices_pair_left_and_right(anny):
    motion = synthetic_motion(anny, {}, [{}])
    twin = motion.mirror
    parts = anny.vertex_parts
    assert (MIRROR_PART[parts] == parts[twin]).mean() > 0.97
    assert (twin[twin] == np.arange(len(twin))).mean() > 0.8


def test_snap_keypoints_moves_hands_and_face_with_the_body():
    keypoints = np.random.default_rng(0).uniform(0, 500, (3, 133, 3)).astype(np.float32)
    body = keypoints[:, :23, :2] + np.float32(7.0)
    out = snap_keypoints(keypoints, body)
    np.testing.assert_allclose(out[:, :23, :2], body)
    np.testing.assert_allclose(out[:, LEFT_HAND_ROOT : LEFT_HAND_ROOT + 21, :2], keypoints[:, 91:112, :2] + 7)
    np.testing.assert_allclose(out[:, FACE, :2], keypoints[:, FACE, :2] + 7)
    np.testing.assert_allclose(out[..., 2], keypoints[..., 2])
    assert L_WRIST < 23 and NOSE < 23
