"""Guidance maps from a posed body: one rasterisation per frame gives depth, normals, semantics and the mask.

Every triangle is rasterised in one pass (a ``warp`` kernel, CPU or CUDA): each pixel whose ray (pinhole
``Camera`` at the origin) hits the triangle, by the exact ray-triangle test, keeps the nearest hit as one
64-bit key (depth quantised to 1/2^20 m, then the triangle id), updated with an atomic min, so the result
is the same as casting one ray per pixel and taking the first hit. A second pass, per pixel of the body's
bounding box, recomputes the winning triangle's hit exactly and writes everything else:

- ``depth``: z of the hit in metres (0 off the body); ``depth_image`` maps the body's nearest point to 255
  and its farthest (at least 0.5 m behind) to 64, background 0 (near bright, as Champ's depth maps, but
  the far body stays apart from the background); ``depth_map("champ")`` is Champ's own convention (its
  Blender scene normalises each frame's body depth min..max to 255..0), what its depth encoder was trained on.
- ``normal``: unit camera-space (OpenCV axes) normal interpolated from vertex normals; ``normal_image``
  encodes it as ``(n + 1) / 2`` in OpenGL-style view axes (x right, y up, z towards the viewer), the usual
  look of normal maps: a surface facing the camera is (128, 128, 255).
- ``semantic``: the Champ colour of the part of the hit triangle's nearest vertex; background black.
- ``face`` / ``bary``: the surface point each pixel sees (-1 off the body); ``bary`` weights the
  triangle's vertices ``faces[face]`` in order. The motion field and warp engine read these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import warp as wp

from animate.body.camera import Camera
from animate.body.parts import CHAMP_PALETTE

# Warp prints its start-up banner and kernel loads to stdout, where `animate run --json` writes its result.
wp.config.log_level = wp.LOG_WARNING

DEPTH_NEAR_VALUE, DEPTH_FAR_VALUE, DEPTH_MIN_RANGE = 255.0, 64.0, 0.5
DEPTH_CONVENTIONS = ("floor64", "champ")
NEAR = 1.0e-3  # triangles with a vertex nearer than this (metres) are not drawn
DEPTH_SCALE = float(1 << 20)  # depth quantum of the z-buffer key: ~1 micrometre
FACE_BITS = 24  # triangle ids below 2^24 (16.7 M) fit in the key's low bits
EMPTY_KEY = np.iinfo(np.int64).max
EDGE_TOLERANCE = 1.0e-5  # barycentric slack: pixels on a shared edge are never missed by both triangles


@wp.func
def _ray_hit(d: wp.vec3, p0: wp.vec3, p1: wp.vec3, p2: wp.vec3) -> wp.vec3:
    """(t, u, v) of the ray from the origin along ``d`` (d.z = 1, so t is the hit's z) on the triangle's
    plane; u, v weight p1, p2 (Moller-Trumbore). t = -1 when the ray is parallel to the plane."""
    e1 = p1 - p0
    e2 = p2 - p0
    pvec = wp.cross(d, e2)
    det = wp.dot(e1, pvec)
    out = wp.vec3(-1.0, 0.0, 0.0)
    if wp.abs(det) > 1.0e-20:
        inv = 1.0 / det
        tvec = -p0
        qvec = wp.cross(tvec, e1)
        out = wp.vec3(wp.dot(e2, qvec) * inv, wp.dot(tvec, pvec) * inv, wp.dot(d, qvec) * inv)
    return out


@wp.func
def _keep_smaller(keys: wp.array(dtype=wp.int64), i: int, key: wp.int64):
    # Atomic 64-bit min as a compare-and-swap loop (warp's int64 CAS is atomic on CPU and CUDA alike).
    old = keys[i]
    while key < old:
        seen = wp.atomic_cas(keys, i, old, key)
        old = wp.where(seen == old, key, seen)  # stored: done (key < key is false); else retry


@wp.kernel
def _raster(
    points: wp.array(dtype=wp.vec3),
    indices: wp.array(dtype=wp.int32),
    outward: int,
    x0: int,
    y0: int,
    box_w: int,
    box_h: int,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    keys: wp.array(dtype=wp.int64),
):
    # One triangle: every pixel centre in its projected bounding box that its ray hits keeps the nearest
    # (depth, triangle) key.
    f = wp.tid()
    p0 = points[indices[f * 3]]
    p1 = points[indices[f * 3 + 1]]
    p2 = points[indices[f * 3 + 2]]
    if p0[2] < NEAR or p1[2] < NEAR or p2[2] < NEAR:
        return
    e1 = p1 - p0
    e2 = p2 - p0
    # A closed mesh's nearest hit always faces the camera: skip triangles facing away (outward = +-1).
    if outward != 0 and float(outward) * wp.dot(wp.cross(e1, e2), p0) >= 0.0:
        return
    u0 = fx * p0[0] / p0[2] + cx
    u1 = fx * p1[0] / p1[2] + cx
    u2 = fx * p2[0] / p2[2] + cx
    v0 = fy * p0[1] / p0[2] + cy
    v1 = fy * p1[1] / p1[2] + cy
    v2 = fy * p2[1] / p2[2] + cy
    xa = wp.max(int(wp.floor(wp.min(wp.min(u0, u1), u2) - 0.5)), x0)
    xb = wp.min(int(wp.ceil(wp.max(wp.max(u0, u1), u2) - 0.5)), x0 + box_w - 1)
    ya = wp.max(int(wp.floor(wp.min(wp.min(v0, v1), v2) - 0.5)), y0)
    yb = wp.min(int(wp.ceil(wp.max(wp.max(v0, v1), v2) - 0.5)), y0 + box_h - 1)
    # Moller-Trumbore for the ray d = (a, b, 1) is linear in d: det = d.n, u = d.pu / det, v = d.pv / det,
    # t = t_num / det; along a row each numerator is an affine function of a.
    n = wp.cross(e2, e1)
    pu = wp.cross(e2, -p0)
    pv = wp.cross(-p0, e1)
    t_num = wp.dot(e2, pv)
    step = 1.0 / fx
    a0 = (float(xa) + 0.5 - cx) / fx
    for y in range(ya, yb + 1):
        b = (float(y) + 0.5 - cy) / fy
        det_row = b * n[1] + n[2]
        u_row = b * pu[1] + pu[2]
        v_row = b * pv[1] + pv[2]
        row = (y - y0) * box_w - x0
        for x in range(xa, xb + 1):
            a = a0 + float(x - xa) * step
            det = a * n[0] + det_row
            un = a * pu[0] + u_row
            vn = a * pv[0] + v_row
            if det < 0.0:  # compare numerators without dividing
                det = -det
                un = -un
                vn = -vn
            slack = EDGE_TOLERANCE * det
            if det > 1.0e-20 and un >= -slack and vn >= -slack and un + vn <= det + slack:
                t = t_num / (a * n[0] + det_row)
                if t > NEAR:
                    key = (wp.int64(t * DEPTH_SCALE) << wp.int64(FACE_BITS)) | wp.int64(f)
                    _keep_smaller(keys, row + x, key)


@wp.kernel
def _accumulate_normals(
    points: wp.array(dtype=wp.vec3), indices: wp.array(dtype=wp.int32), normals: wp.array(dtype=wp.vec3)
):
    f = wp.tid()
    i0 = indices[f * 3]
    i1 = indices[f * 3 + 1]
    i2 = indices[f * 3 + 2]
    n = wp.cross(points[i1] - points[i0], points[i2] - points[i0])  # area-weighted
    wp.atomic_add(normals, i0, n)
    wp.atomic_add(normals, i1, n)
    wp.atomic_add(normals, i2, n)


@wp.kernel
def _unit(normals: wp.array(dtype=wp.vec3)):
    i = wp.tid()
    n = normals[i]
    if wp.length(n) > 1.0e-20:
        normals[i] = wp.normalize(n)


@wp.kernel
def _shade(
    points: wp.array(dtype=wp.vec3),
    normals: wp.array(dtype=wp.vec3),
    indices: wp.array(dtype=wp.int32),
    vertex_parts: wp.array(dtype=wp.int16),
    palette: wp.array(dtype=wp.uint8),
    keys: wp.array(dtype=wp.int64),
    x0: int,
    y0: int,
    box_w: int,
    width: int,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    face_out: wp.array(dtype=wp.int32),
    bary_out: wp.array(dtype=wp.vec3),
    depth_out: wp.array(dtype=wp.float32),
    normal_out: wp.array(dtype=wp.vec3),
    part_out: wp.array(dtype=wp.int16),
    normal_rgb: wp.array(dtype=wp.uint8),
    semantic_rgb: wp.array(dtype=wp.uint8),
):
    # One pixel of the box: the winning triangle's exact hit -> face, barycentrics, depth, normal, part.
    tid = wp.tid()
    key = keys[tid]
    if key == wp.int64(EMPTY_KEY):
        return
    x = x0 + tid % box_w
    y = y0 + tid / box_w
    pix = y * width + x
    f = wp.int32(key & wp.int64((1 << FACE_BITS) - 1))
    i0 = indices[f * 3]
    i1 = indices[f * 3 + 1]
    i2 = indices[f * 3 + 2]
    p0 = points[i0]
    p1 = points[i1]
    p2 = points[i2]
    d = wp.vec3((float(x) + 0.5 - cx) / fx, (float(y) + 0.5 - cy) / fy, 1.0)
    h = _ray_hit(d, p0, p1, p2)
    b = wp.vec3(1.0 - h[1] - h[2], h[1], h[2])
    n = normals[i0] * b[0] + normals[i1] * b[1] + normals[i2] * b[2]
    if wp.length(n) < 1.0e-8:
        n = wp.cross(p1 - p0, p2 - p0)
    n = wp.normalize(n)
    if wp.dot(n, d) > 0.0:  # seen from behind (inside a fold): show the side facing the camera
        n = -n
    nearest = i0
    if b[1] > b[0] and b[1] >= b[2]:
        nearest = i1
    elif b[2] > b[0] and b[2] > b[1]:
        nearest = i2
    part = vertex_parts[nearest]
    face_out[pix] = f
    bary_out[pix] = b
    depth_out[pix] = h[0]
    normal_out[pix] = n
    part_out[pix] = part
    # The 8-bit maps: (n + 1) / 2 in view axes (x right, y up, z to the viewer), the part's colour.
    view = wp.vec3(n[0], -n[1], -n[2])
    for k in range(3):
        normal_rgb[pix * 3 + k] = wp.uint8(wp.clamp(int(wp.round((view[k] + 1.0) * 127.5)), 0, 255))
        semantic_rgb[pix * 3 + k] = palette[int(part) * 3 + k]


@dataclass
class RenderedFrame:
    """All guidance maps of one frame at the camera's size; see the module docstring.

    The 8-bit images are made by the renderer along with the maps; the arrays returned by the image
    properties are shared with the frame (copy before modifying them).
    """

    mask: np.ndarray  # (H, W) bool
    depth: np.ndarray  # (H, W) float32 metres, 0 off the body
    normal: np.ndarray  # (H, W, 3) float32 unit camera-space normals, 0 off the body
    face: np.ndarray  # (H, W) int32 triangle index, -1 off the body
    bary: np.ndarray  # (H, W, 3) float32 barycentric weights of faces[face]
    part: np.ndarray  # (H, W) int16 part label 0..23, -1 off the body
    box: tuple[int, int, int, int] | None = None  # (x0, y0, w, h) holding every body pixel; None: unknown
    normal_rgb: np.ndarray | None = field(default=None, repr=False)
    semantic_rgb: np.ndarray | None = field(default=None, repr=False)

    def _crop(self) -> tuple[slice, slice]:
        if self.box is None:
            return slice(None), slice(None)
        x0, y0, w, h = self.box
        return slice(y0, y0 + h), slice(x0, x0 + w)

    @property
    def depth_image(self) -> np.ndarray:
        """(H, W) uint8: nearest body point 255, farthest 64 (or less), background 0."""
        return self.depth_map("floor64")

    def depth_map(self, convention: str = "floor64") -> np.ndarray:
        """(H, W) uint8 depth image, background 0. ``"floor64"``: nearest body point 255, farthest 64 (at
        least ``DEPTH_MIN_RANGE`` behind; 1 at the least); ``"champ"``: the body's depth min..max -> 255..0
        linearly, so the farthest body point equals the background (Blender's Normalize and Invert, rounded
        half up to 8 bits)."""
        if convention not in DEPTH_CONVENTIONS:
            raise ValueError(f"depth convention must be one of {DEPTH_CONVENTIONS}, got {convention!r}")
        out = np.zeros(self.depth.shape, np.uint8)
        crop = self._crop()
        mask = self.mask[crop]
        if not mask.any():
            return out
        z = self.depth[crop][mask]
        near = float(z.min())
        if convention == "champ":
            span = float(z.max()) - near
            value = (
                255.0 * (1.0 - (z.astype(np.float64) - near) / span) if span > 0 else np.full(z.shape, 255.0)
            )
            out[crop][mask] = np.floor(value + 0.5).clip(0, 255).astype(np.uint8)
            return out
        far = max(float(z.max()), near + DEPTH_MIN_RANGE)
        value = DEPTH_NEAR_VALUE + (z - near) * ((DEPTH_FAR_VALUE - DEPTH_NEAR_VALUE) / (far - near))
        out[crop][mask] = np.clip(np.round(value), 1, 255).astype(np.uint8)
        return out

    @property
    def normal_image(self) -> np.ndarray:
        """(H, W, 3) uint8 ``(n + 1) / 2`` in view axes x right, y up, z towards the viewer; background 0."""
        if self.normal_rgb is not None:
            return self.normal_rgb
        out = np.zeros((*self.mask.shape, 3), np.uint8)
        view = self.normal[self.mask] * np.array([1.0, -1.0, -1.0], np.float32)
        out[self.mask] = np.round((view + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
        return out

    @property
    def semantic_image(self) -> np.ndarray:
        """(H, W, 3) uint8 Champ palette colour of each body pixel's part; background black."""
        if self.semantic_rgb is not None:
            return self.semantic_rgb
        out = np.zeros((*self.part.shape, 3), np.uint8)
        out[self.mask] = CHAMP_PALETTE[self.part[self.mask]]
        return out

    @property
    def mask_image(self) -> np.ndarray:
        return self.mask.astype(np.uint8) * 255


#: The output planes the shading kernel writes, in its argument order, with their element types.
_PLANE_TYPES = (
    ("face", wp.int32),
    ("bary", wp.vec3),
    ("depth", wp.float32),
    ("normal", wp.vec3),
    ("part", wp.int16),
    ("normal_rgb", wp.uint8),
    ("semantic_rgb", wp.uint8),
)


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


def _is_closed(faces: np.ndarray) -> bool:
    """Whether a triangle mesh is closed and consistently wound: every edge has exactly one reverse twin."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    n = int(faces.max()) + 1 if len(faces) else 1
    forward = np.unique(edges[:, 0] * n + edges[:, 1])
    backward = np.unique(edges[:, 1] * n + edges[:, 0])
    return len(forward) == len(edges) and np.array_equal(forward, backward)


def _body_box(vertices: np.ndarray, camera: Camera) -> tuple[int, int, int, int] | None:
    """(x0, y0, w, h) pixel box holding every projected vertex in front of the camera, clipped to the
    image; None when nothing is in view."""
    front = vertices[vertices[:, 2] >= NEAR]
    if not len(front):
        return None
    u = front[:, 0] / front[:, 2] * camera.fx + camera.cx
    v = front[:, 1] / front[:, 2] * camera.fy + camera.cy
    x0, x1 = max(int(np.floor(u.min() - 0.5)), 0), min(int(np.ceil(u.max() - 0.5)), camera.width - 1)
    y0, y1 = max(int(np.floor(v.min() - 0.5)), 0), min(int(np.ceil(v.max() - 0.5)), camera.height - 1)
    if x1 < x0 or y1 < y0:
        return None
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1


class Renderer:
    """Renders posed bodies of one mesh topology (CPU or CUDA through ``warp``).

    Every call allocates its own buffers, so one instance may serve several threads.
    """

    def __init__(self, faces: np.ndarray, vertex_parts: np.ndarray, device: str = "cpu") -> None:
        wp.init()
        self.device = str(wp.get_device(device))
        self.faces = np.ascontiguousarray(faces, dtype=np.int32)
        if len(self.faces) >= 1 << FACE_BITS:
            raise ValueError(f"at most {1 << FACE_BITS} triangles, got {len(self.faces)}")
        self.vertex_parts = np.asarray(vertex_parts, dtype=np.int16)
        self._indices = wp.array(self.faces.reshape(-1), dtype=wp.int32, device=self.device)
        self._parts = wp.array(self.vertex_parts, dtype=wp.int16, device=self.device)
        self._palette = wp.array(CHAMP_PALETTE.reshape(-1), dtype=wp.uint8, device=self.device)
        self._cpu = wp.get_device(self.device).is_cpu
        self._closed = _is_closed(self.faces)
        self._orientation: int | None = None

    def _outward(self, vertices: np.ndarray) -> int:
        """+1 / -1 when the mesh is closed with outward / inward winding (back faces can be skipped), else 0."""
        if self._orientation is None:
            tri = vertices[self.faces].astype(np.float64)
            volume = np.einsum("ij,ij->", tri[:, 0], np.cross(tri[:, 1], tri[:, 2]))
            self._orientation = int(np.sign(volume)) if self._closed else 0
        return self._orientation

    def render(self, vertices: np.ndarray | torch.Tensor, camera: Camera) -> RenderedFrame:
        """Rasterise (V, 3) camera-space ``vertices`` at ``camera``'s size (one ray per pixel centre)."""
        if torch.is_tensor(vertices):
            vertices = vertices.detach().cpu().numpy()
        vertices = np.ascontiguousarray(vertices, dtype=np.float32)
        w, h = camera.width, camera.height
        planes = {
            "face": np.full((h, w), -1, np.int32),
            "bary": np.zeros((h, w, 3), np.float32),
            "depth": np.zeros((h, w), np.float32),
            "normal": np.zeros((h, w, 3), np.float32),
            "part": np.full((h, w), -1, np.int16),
            "normal_rgb": np.zeros((h, w, 3), np.uint8),
            "semantic_rgb": np.zeros((h, w, 3), np.uint8),
        }
        box = _body_box(vertices, camera)
        if box is not None:
            self._draw(vertices, camera, box, planes)
        return RenderedFrame(mask=planes["face"] >= 0, box=box or (0, 0, 0, 0), **planes)

    def _draw(
        self, vertices: np.ndarray, camera: Camera, box: tuple[int, int, int, int], planes: dict
    ) -> None:
        device = self.device
        x0, y0, box_w, box_h = box
        intrinsics = [camera.fx, camera.fy, camera.cx, camera.cy]
        points = wp.array(vertices, dtype=wp.vec3, device=device)
        keys = wp.full(box_w * box_h, EMPTY_KEY, dtype=wp.int64, device=device)
        n_faces = len(self.faces)
        raster_inputs = [points, self._indices, self._outward(vertices), x0, y0, box_w, box_h, *intrinsics]
        wp.launch(_raster, dim=n_faces, inputs=raster_inputs, outputs=[keys], device=device)
        normals = wp.zeros(len(vertices), dtype=wp.vec3, device=device)
        wp.launch(
            _accumulate_normals, dim=n_faces, inputs=[points, self._indices], outputs=[normals], device=device
        )
        wp.launch(_unit, dim=len(vertices), inputs=[normals], device=device)
        # On the CPU the kernel writes straight into the numpy arrays; on CUDA into copies fetched after.
        outs = []
        for name, dtype in _PLANE_TYPES:
            flat = planes[name].reshape(-1, 3) if dtype is wp.vec3 else planes[name].reshape(-1)
            outs.append(wp.array(flat, dtype=dtype, device=device, copy=not self._cpu))
        shade_inputs = [
            points,
            normals,
            self._indices,
            self._parts,
            self._palette,
            keys,
            x0,
            y0,
            box_w,
            camera.width,
        ]
        wp.launch(_shade, dim=box_w * box_h, inputs=[*shade_inputs, *intrinsics], outputs=outs, device=device)
        if not self._cpu:
            for (name, _dtype), out in zip(_PLANE_TYPES, outs, strict=True):
                planes[name].reshape(-1)[:] = out.numpy().reshape(-1)
