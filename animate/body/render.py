"""Guidance maps from a posed body: one ray cast per frame gives depth, normals, semantics and the mask.

Each pixel's ray (pinhole ``Camera`` at the origin) is cast against a warp BVH over the posed triangles
(refitted, not rebuilt, from frame to frame), only inside the projected bounding box of the body. The hit
gives the triangle id and its barycentric weights, from which everything else follows:

- ``depth``: z of the hit in metres (0 off the body); ``depth_image`` maps the body's nearest point to 255
  and its farthest (at least 0.5 m behind) to 64, background 0 (near bright, as Champ's depth maps).
- ``normal``: unit camera-space (OpenCV axes) normal interpolated from vertex normals; ``normal_image``
  encodes it as ``(n + 1) / 2`` in OpenGL-style view axes (x right, y up, z towards the viewer), the usual
  look of normal maps: a surface facing the camera is (128, 128, 255).
- ``semantic``: the Champ colour of the part of the hit triangle's nearest vertex; background black.
- ``face`` / ``bary``: the surface point each pixel sees (-1 off the body); ``bary`` weights the
  triangle's vertices ``faces[face]`` in order. The motion field and warp engine read these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import warp as wp

from animate.body.camera import Camera
from animate.body.parts import CHAMP_PALETTE

DEPTH_NEAR_VALUE, DEPTH_FAR_VALUE, DEPTH_MIN_RANGE = 255.0, 64.0, 0.5


@wp.kernel
def _cover(
    points: wp.array(dtype=wp.vec3),
    indices: wp.array(dtype=wp.int32),
    width: int,
    height: int,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    covered: wp.array(dtype=wp.int32),
):
    # Conservative coverage: every pixel in each projected triangle's bounding box may be hit.
    f = wp.tid()
    p0 = points[indices[f * 3]]
    p1 = points[indices[f * 3 + 1]]
    p2 = points[indices[f * 3 + 2]]
    if p0[2] < 1.0e-3 or p1[2] < 1.0e-3 or p2[2] < 1.0e-3:
        return
    u0 = fx * p0[0] / p0[2] + cx
    u1 = fx * p1[0] / p1[2] + cx
    u2 = fx * p2[0] / p2[2] + cx
    v0 = fy * p0[1] / p0[2] + cy
    v1 = fy * p1[1] / p1[2] + cy
    v2 = fy * p2[1] / p2[2] + cy
    x0 = wp.max(int(wp.floor(wp.min(wp.min(u0, u1), u2) - 0.5)), 0)
    x1 = wp.min(int(wp.ceil(wp.max(wp.max(u0, u1), u2) - 0.5)), width - 1)
    y0 = wp.max(int(wp.floor(wp.min(wp.min(v0, v1), v2) - 0.5)), 0)
    y1 = wp.min(int(wp.ceil(wp.max(wp.max(v0, v1), v2) - 0.5)), height - 1)
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            covered[y * width + x] = 1


@wp.kernel
def _cast(
    mesh: wp.uint64,
    normals: wp.array(dtype=wp.vec3),
    indices: wp.array(dtype=wp.int32),
    pixels: wp.array(dtype=wp.int32),
    width: int,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    face_out: wp.array(dtype=wp.int32),
    bary_out: wp.array(dtype=wp.vec3),
    depth_out: wp.array(dtype=wp.float32),
    normal_out: wp.array(dtype=wp.vec3),
):
    tid = wp.tid()
    pix = pixels[tid]
    px = pix % width
    py = pix // width
    d = wp.normalize(wp.vec3((float(px) + 0.5 - cx) / fx, (float(py) + 0.5 - cy) / fy, 1.0))
    q = wp.mesh_query_ray(mesh, wp.vec3(0.0, 0.0, 0.0), d, 1.0e6)
    face_out[tid] = -1
    if q.result:
        u = q.u
        v = q.v
        w = 1.0 - u - v
        face_out[tid] = q.face
        bary_out[tid] = wp.vec3(u, v, w)
        depth_out[tid] = q.t * d[2]
        i0 = indices[q.face * 3]
        i1 = indices[q.face * 3 + 1]
        i2 = indices[q.face * 3 + 2]
        n = normals[i0] * u + normals[i1] * v + normals[i2] * w
        if wp.length(n) < 1.0e-8:
            n = q.normal
        n = wp.normalize(n)
        if wp.dot(n, d) > 0.0:  # seen from behind (inside a fold): show the side facing the camera
            n = -n
        normal_out[tid] = n


@dataclass
class RenderedFrame:
    """All guidance maps of one frame at the camera's size; see the module docstring."""

    mask: np.ndarray  # (H, W) bool
    depth: np.ndarray  # (H, W) float32 metres, 0 off the body
    normal: np.ndarray  # (H, W, 3) float32 unit camera-space normals, 0 off the body
    face: np.ndarray  # (H, W) int32 triangle index, -1 off the body
    bary: np.ndarray  # (H, W, 3) float32 barycentric weights of faces[face]
    part: np.ndarray  # (H, W) int16 part label 0..23, -1 off the body

    @property
    def depth_image(self) -> np.ndarray:
        """(H, W) uint8: nearest body point 255, farthest 64 (or less), background 0."""
        out = np.zeros(self.depth.shape, np.uint8)
        if not self.mask.any():
            return out
        z = self.depth[self.mask]
        near = float(z.min())
        far = max(float(z.max()), near + DEPTH_MIN_RANGE)
        value = DEPTH_NEAR_VALUE + (z - near) / (far - near) * (DEPTH_FAR_VALUE - DEPTH_NEAR_VALUE)
        out[self.mask] = np.clip(np.round(value), 1, 255).astype(np.uint8)
        return out

    @property
    def normal_image(self) -> np.ndarray:
        """(H, W, 3) uint8 ``(n + 1) / 2`` in view axes x right, y up, z towards the viewer; background 0."""
        view = self.normal * np.array([1.0, -1.0, -1.0], np.float32)
        out = np.round((view + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
        out[~self.mask] = 0
        return out

    @property
    def semantic_image(self) -> np.ndarray:
        """(H, W, 3) uint8 Champ palette colour of each body pixel's part; background black."""
        out = np.zeros((*self.part.shape, 3), np.uint8)
        out[self.mask] = CHAMP_PALETTE[self.part[self.mask]]
        return out

    @property
    def mask_image(self) -> np.ndarray:
        return self.mask.astype(np.uint8) * 255


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) area-weighted unit vertex normals of a triangle mesh."""
    tri = vertices[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    out = np.zeros_like(vertices)
    for k in range(3):
        for axis in range(3):
            out[:, axis] += np.bincount(faces[:, k], face_n[:, axis], minlength=len(vertices))
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norm, 1e-12)).astype(np.float32)


class Renderer:
    """Renders posed bodies of one mesh topology; keeps the BVH between frames and refits it."""

    def __init__(self, faces: np.ndarray, vertex_parts: np.ndarray, device: str = "cpu") -> None:
        wp.init()
        self.device = device
        self.faces = np.ascontiguousarray(faces, dtype=np.int32)
        self.vertex_parts = np.asarray(vertex_parts, dtype=np.int16)
        self._indices = wp.array(self.faces.reshape(-1), dtype=wp.int32, device=device)
        self._points: wp.array | None = None
        self._mesh: wp.Mesh | None = None

    def _update(self, vertices: np.ndarray) -> wp.Mesh:
        if self._mesh is None or self._points is None or self._points.shape[0] != len(vertices):
            self._points = wp.array(vertices, dtype=wp.vec3, device=self.device)
            self._mesh = wp.Mesh(points=self._points, indices=self._indices)
        else:
            self._points.assign(vertices)
            self._mesh.refit()
        return self._mesh

    def render(self, vertices: np.ndarray | torch.Tensor, camera: Camera) -> RenderedFrame:
        """Cast one ray per pixel of ``camera`` at (V, 3) camera-space ``vertices``."""
        if torch.is_tensor(vertices):
            vertices = vertices.detach().cpu().numpy()
        vertices = np.ascontiguousarray(vertices, dtype=np.float32)
        w, h = camera.width, camera.height
        face = np.full(h * w, -1, np.int32)
        bary = np.zeros((h * w, 3), np.float32)
        depth = np.zeros(h * w, np.float32)
        normal = np.zeros((h * w, 3), np.float32)
        mesh = self._update(vertices)
        intrinsics = [camera.fx, camera.fy, camera.cx, camera.cy]
        covered = wp.zeros(h * w, dtype=wp.int32, device=self.device)
        wp.launch(
            _cover,
            dim=len(self.faces),
            inputs=[self._points, self._indices, w, h, *intrinsics],
            outputs=[covered],
            device=self.device,
        )
        # Rays only where some triangle may project: a fraction of the frame, and exact at the silhouette.
        pixels = np.flatnonzero(covered.numpy()).astype(np.int32)
        if len(pixels):
            normals = wp.array(vertex_normals(vertices, self.faces), dtype=wp.vec3, device=self.device)
            n = len(pixels)
            outs = [
                wp.empty(n, dtype=wp.int32, device=self.device),
                wp.zeros(n, dtype=wp.vec3, device=self.device),
                wp.zeros(n, dtype=wp.float32, device=self.device),
                wp.zeros(n, dtype=wp.vec3, device=self.device),
            ]
            pix = wp.array(pixels, dtype=wp.int32, device=self.device)
            inputs = [mesh.id, normals, self._indices, pix, w, *intrinsics]
            wp.launch(_cast, dim=n, inputs=inputs, outputs=outs, device=self.device)
            face[pixels], bary[pixels], depth[pixels], normal[pixels] = (a.numpy() for a in outs)
        face = face.reshape(h, w)
        mask = face >= 0
        part = np.full((h, w), -1, np.int16)
        bary = bary.reshape(h, w, 3)
        if mask.any():
            hit_faces = face[mask]
            nearest = bary[mask].argmax(axis=1)
            part[mask] = self.vertex_parts[self.faces[hit_faces, nearest]]
        return RenderedFrame(mask, depth.reshape(h, w), normal.reshape(h, w, 3), face, bary, part)
