"""Anny loading, part labels and the ray-cast renderer (depth, normals, semantics, mask, face + bary)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import warp as wp

from animate.body import CHAMP_PALETTE, MIRROR_PART, NUM_PARTS, PART_NAMES, Camera, Renderer, load_anny
from animate.body.model import NUM_JOINTS, rotvec_to_matrix

FACING_CAMERA = [
    np.pi / 2,
    0.0,
    0.0,
]  # Anny's canonical frame (z up, facing -y) -> upright, facing the camera


@pytest.fixture(scope="session")
def anny():
    return load_anny()


@pytest.fixture(scope="session")
def posed_frame(anny):
    rest = anny.rest(anny.tensor(anny.default_shape())[None])
    pose = torch.zeros(1, NUM_JOINTS, 3)
    pose[0, anny.joint_names.index("left_elbow")] = torch.tensor([0.0, 0.0, 1.2])
    pose[0, anny.joint_names.index("right_shoulder")] = torch.tensor([0.0, -0.6, 0.0])
    posed = anny.pose(rest, torch.tensor([FACING_CAMERA]), pose, torch.tensor([[0.1, 0.0, 2.6]]))
    camera = Camera.default(288, 512)
    renderer = Renderer(anny.faces, anny.vertex_parts)
    return posed.vertices[0].numpy(), renderer.render(posed.vertices[0], camera), camera, renderer


def test_anny_loads_once_with_its_published_size(anny):
    assert load_anny() is anny
    assert anny.num_vertices == 13718
    assert len(anny.bone_labels) == 104
    assert anny.faces.shape[1] == 3 and anny.faces.max() == anny.num_vertices - 1
    assert len(anny.shape_names) == 6


def test_every_part_labels_vertices_and_sides_are_the_persons(anny):
    counts = np.bincount(anny.vertex_parts, minlength=NUM_PARTS)
    assert (counts > 0).all(), counts
    rest = anny.rest(anny.tensor(anny.default_shape())[None]).vertices[0].numpy()
    for part, name in enumerate(PART_NAMES):
        x = np.median(rest[anny.vertex_parts == part, 0])
        # Anny's canonical frame has the person's left at +x; twins mirror each other.
        if name.startswith("left_"):
            assert x > 0.02 and PART_NAMES[MIRROR_PART[part]] == name.replace("left_", "right_")
        elif name.startswith("right_"):
            assert x < -0.02
        else:
            assert abs(x) < 0.02 and MIRROR_PART[part] == part


def test_rotvec_round_trip():
    rv = torch.tensor([[0.3, -0.2, 0.9], [0.0, 0.0, 0.0], [1e-5, 0, 0]])
    r = rotvec_to_matrix(rv)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3).expand(3, 3, 3), atol=1e-6)
    from animate.body.model import matrix_to_rotvec

    assert torch.allclose(matrix_to_rotvec(r), rv, atol=1e-5)


def test_render_normals_are_unit_on_the_body(posed_frame):
    _, frame, _, _ = posed_frame
    assert frame.mask.sum() > 5000
    lengths = np.linalg.norm(frame.normal[frame.mask], axis=1)
    np.testing.assert_allclose(lengths, 1.0, atol=1e-4)
    assert not frame.normal[~frame.mask].any()
    img = frame.normal_image
    assert not img[~frame.mask].any()
    # Surfaces seen by the camera face it: view-space z (blue) above the middle.
    assert (img[frame.mask][:, 2] >= 127).mean() > 0.99


def test_render_semantic_colours_are_champ_palette(posed_frame):
    _, frame, _, _ = posed_frame
    sem = frame.semantic_image
    palette = {tuple(c) for c in CHAMP_PALETTE.tolist()}
    body = {tuple(c) for c in np.unique(sem[frame.mask], axis=0).tolist()}
    assert body <= palette
    assert len(body) >= 18  # a front view shows most parts
    assert not sem[~frame.mask].any()


def test_render_face_and_bary_name_the_surface_point_each_pixel_sees(posed_frame):
    vertices, frame, camera, renderer = posed_frame
    ys, xs = np.nonzero(frame.mask)
    pick = np.random.default_rng(0).choice(len(ys), 500, replace=False)
    ys, xs = ys[pick], xs[pick]
    bary = frame.bary[ys, xs]
    np.testing.assert_allclose(bary.sum(1), 1.0, atol=1e-5)
    assert (bary > -1e-4).all()
    points = np.einsum("nk,nkd->nd", bary, vertices[renderer.faces[frame.face[ys, xs]]])
    np.testing.assert_allclose(points[:, 2], frame.depth[ys, xs], rtol=1e-4)
    uv = camera.project(points)
    np.testing.assert_allclose(uv, np.stack([xs + 0.5, ys + 0.5], 1), atol=1e-2)
    assert (frame.face[~frame.mask] == -1).all()


def test_render_depth_increases_away_from_the_camera(anny, posed_frame):
    vertices, frame, camera, renderer = posed_frame
    depth, img = frame.depth[frame.mask], frame.depth_image[frame.mask].astype(int)
    assert not frame.depth[~frame.mask].any() and not frame.depth_image[~frame.mask].any()
    order = np.argsort(depth)
    assert (np.diff(img[order]) <= 0).all()  # nearer is brighter
    assert img.max() == 255 and img.min() > 0
    farther = renderer.render(vertices + np.array([0.0, 0.0, 1.0], np.float32), camera)
    assert np.median(farther.depth[farther.mask]) == pytest.approx(np.median(depth) + 1.0, abs=0.05)
    assert farther.mask.sum() < frame.mask.sum()


def test_render_tilted_plane_matches_geometry():
    # Two triangles on the plane z = 2 + y (tilted 45 degrees): depth and normal known in closed form.
    verts = np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 3], [-1, 1, 3]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    camera = Camera(64, 64, 32.0, 32.0, 32.0, 32.0)
    frame = Renderer(faces, np.zeros(4, np.int16)).render(verts, camera)
    ys, xs = np.nonzero(frame.mask)
    ry = (ys + 0.5 - 32.0) / 32.0
    np.testing.assert_allclose(frame.depth[ys, xs], 2.0 / (1.0 - ry), rtol=1e-4)
    expected = np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0)
    np.testing.assert_allclose(frame.normal[frame.mask], np.broadcast_to(expected, (len(ys), 3)), atol=1e-4)
    assert frame.depth[40, 32] > frame.depth[20, 32]


@wp.kernel
def _ray_cast_faces(
    mesh: wp.uint64, width: int, fx: float, fy: float, cx: float, cy: float, out: wp.array(dtype=wp.int32)
):
    # Reference: one BVH ray query per pixel centre (what the rasteriser must reproduce).
    tid = wp.tid()
    d = wp.normalize(wp.vec3((float(tid % width) + 0.5 - cx) / fx, (float(tid / width) + 0.5 - cy) / fy, 1.0))
    q = wp.mesh_query_ray(mesh, wp.vec3(0.0, 0.0, 0.0), d, 1.0e6)
    out[tid] = -1
    if q.result:
        out[tid] = q.face


def test_rasteriser_sees_what_a_ray_cast_sees(posed_frame):
    vertices, frame, camera, renderer = posed_frame
    points = wp.array(vertices, dtype=wp.vec3)
    mesh = wp.Mesh(points=points, indices=wp.array(renderer.faces.reshape(-1), dtype=wp.int32))
    faces = wp.zeros(camera.width * camera.height, dtype=wp.int32)
    wp.launch(
        _ray_cast_faces,
        dim=camera.width * camera.height,
        inputs=[mesh.id, camera.width, camera.fx, camera.fy, camera.cx, camera.cy],
        outputs=[faces],
    )
    cast = faces.numpy().reshape(camera.height, camera.width)
    # Same silhouette, and the same triangle wherever the hit is not on an edge shared by two triangles.
    assert ((cast >= 0) != frame.mask).sum() <= 0.002 * frame.mask.sum()
    both = (cast >= 0) & frame.mask
    assert (cast[both] == frame.face[both]).mean() > 0.99
    # The closed mesh lets the rasteriser skip back faces; an open one (no culling) must agree too.
    open_renderer = Renderer(renderer.faces[:-1], renderer.vertex_parts)
    assert open_renderer._outward(vertices) == 0 and renderer._outward(vertices) == 1
    open_frame = open_renderer.render(vertices, camera)
    assert (open_frame.mask != frame.mask).sum() <= 0.002 * frame.mask.sum()
    np.testing.assert_allclose(open_frame.depth[both], frame.depth[both], atol=1e-4)
