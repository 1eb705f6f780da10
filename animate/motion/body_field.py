"""The dense motion field from the 3D body: each reference pixel follows the body surface point it sees.

A ``BodyMotion`` holds the reference's fitted body and the driving poses transferred onto it
(``animate.body.transfer``), all in the output camera. The reference ray cast gives, for every reference
pixel on the body, the triangle and barycentric weights of the surface point it sees; posing that point
with frame t's body and projecting it gives where the pixel lands (``DenseField``). Reference person
pixels off the naked body (hair, loose clothes) follow their nearest body pixel, rigidly with the local
2D motion of that body part, with a weight that falls from 1 to 0 between ``reach`` and ``2 * reach``
pixels from the body; pixels outside the person are background and do not move (zero flow).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from animate.body.camera import Camera
from animate.body.fit import BodyTrack
from animate.body.model import BodyModel
from animate.body.parts import NUM_PARTS
from animate.body.render import RenderedFrame, Renderer
from animate.pose.layout import FACE, L_WRIST, LEFT_HAND_ROOT, NOSE, R_WRIST, RIGHT_HAND_ROOT

#: SMPL's kinematic tree over the 24 parts of ``animate.body.parts`` (parent of each part, -1 at the root).
PART_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)


def part_neighbours() -> np.ndarray:
    """(24, 24) bool: a part, its parent and children, and the two hips (a skirt hangs across both)."""
    near = np.eye(NUM_PARTS, dtype=bool)
    for child, parent in enumerate(PART_PARENTS):
        if parent >= 0:
            near[child, parent] = near[parent, child] = True
    near[1, 2] = near[2, 1] = True
    return near


def project(camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 3) camera-space points -> (..., 2) float32 pixel positions and (...,) depths."""
    z = np.maximum(points[..., 2], 1e-3)
    uv = np.stack(
        [points[..., 0] / z * camera.fx + camera.cx, points[..., 1] / z * camera.fy + camera.cy], -1
    )
    return uv.astype(np.float32), points[..., 2].astype(np.float32)


def interpolate(values: np.ndarray, triangles: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Per-vertex ``values`` (V, ...) at surface points given by (N, 3) vertex ids and (N, 3) weights."""
    shape = (-1,) + (1,) * (values.ndim - 1)
    out = values[triangles[:, 0]] * bary[:, 0].reshape(shape)
    out += values[triangles[:, 1]] * bary[:, 1].reshape(shape)
    out += values[triangles[:, 2]] * bary[:, 2].reshape(shape)
    return out


def part_affines(source: np.ndarray, target: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """(24, 2, 3) least-squares 2D affine map of each part's points from ``source`` to ``target`` (V, 2).

    Solved for all parts at once from their normal equations; a part with too few points (or all on a
    line) keeps the identity.
    """
    design = np.concatenate([source, np.ones((len(source), 1), source.dtype)], 1).astype(np.float64)
    goal = target.astype(np.float64)
    normal = np.zeros((NUM_PARTS, 3, 3))
    rhs = np.zeros((NUM_PARTS, 3, 2))
    for i in range(3):
        for j in range(i, 3):
            normal[:, i, j] = normal[:, j, i] = np.bincount(parts, design[:, i] * design[:, j], NUM_PARTS)
        for j in range(2):
            rhs[:, i, j] = np.bincount(parts, design[:, i] * goal[:, j], NUM_PARTS)
    out = np.tile(np.eye(2, 3), (NUM_PARTS, 1, 1))
    count = normal[:, 2, 2]
    # Conditioning relative to the part's spread: degenerate parts keep the identity.
    ok = (count >= 3) & (np.abs(np.linalg.det(normal)) > 1e-6 * np.maximum(count, 1.0) ** 3)
    if ok.any():
        out[ok] = np.linalg.solve(normal[ok], rhs[ok]).transpose(0, 2, 1)
    return out


#: The most a part's inverse map may stretch or shrink an offset (its singular values are clipped to
#: [1 / MAX_STRETCH, MAX_STRETCH]).
MAX_STRETCH = 4.0


def inverse_linear(affines: np.ndarray, max_stretch: float = MAX_STRETCH) -> np.ndarray:
    """(P, 2, 2) float32 inverses of the linear parts of (P, 2, 3) affine maps; near-singular -> identity.

    A limb seen end-on in one image and along its length in the other (a forearm pointing at the camera)
    has a map that shrinks one direction many times: its exact inverse would carry a pixel beside the limb
    tens of pixels away in the other image (hair or a sleeve smeared from far along the limb). The
    inverse's singular values are clipped to ``[1 / max_stretch, max_stretch]``, its rotation kept.
    """
    a, b = affines[:, 0, 0], affines[:, 0, 1]
    c, d = affines[:, 1, 0], affines[:, 1, 1]
    det = a * d - b * c
    bad = np.abs(det) < 0.05
    det = np.where(bad, 1.0, det)
    inverse = np.stack([np.stack([d, -b], -1), np.stack([-c, a], -1)], 1) / det[:, None, None]
    inverse[bad] = np.eye(2)
    u, sigma, vt = np.linalg.svd(inverse)
    sigma = np.clip(sigma, 1.0 / max_stretch, max_stretch)
    inverse = (u * sigma[:, None, :]) @ vt
    return inverse.astype(np.float32)


def mirror_vertices(rest_vertices: np.ndarray) -> np.ndarray:
    """(V,) each vertex's left/right twin: the nearest vertex to its mirror image (canonical x -> -x)."""
    from scipy.spatial import cKDTree

    mirrored = rest_vertices * np.array([-1.0, 1.0, 1.0], rest_vertices.dtype)
    _, twin = cKDTree(rest_vertices).query(mirrored)
    return twin.astype(np.int64)


@dataclass
class BodyMotion:
    """The reference's body and the driving poses on it, in the output ``camera`` (its size is the output's).

    ``reference`` is the one-frame fit of the reference image; ``track`` the transferred driving poses
    (reference shape, reference camera). Vertices are posed on demand, in chunks, so memory stays flat.
    """

    body: BodyModel
    reference: BodyTrack
    track: BodyTrack
    camera: Camera
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_frames(self) -> int:
        return len(self.track)

    @property
    def size(self) -> tuple[int, int]:
        return self.camera.width, self.camera.height

    @property
    def faces(self) -> np.ndarray:
        return self.body.faces

    @property
    def vertex_parts(self) -> np.ndarray:
        return self.body.vertex_parts

    def with_track(self, track: BodyTrack) -> BodyMotion:
        """The same reference body driven by another track (same shape); reference caches are kept."""
        if not np.allclose(track.shape, self.track.shape):
            raise ValueError("the track's body shape differs from the reference's")
        return BodyMotion(self.body, self.reference, track, self.camera, dict(self._cache))

    def _rest(self):
        if "rest" not in self._cache:
            with torch.no_grad():
                self._cache["rest"] = self.body.rest(self.body.tensor(self.track.shape)[None])
        return self._cache["rest"]

    @property
    def reference_vertices(self) -> np.ndarray:
        """(V, 3) float32 the reference body in camera space."""
        if "reference_vertices" not in self._cache:
            posed = self.reference.vertices(self.body)
            self._cache["reference_vertices"] = posed[0].cpu().numpy().astype(np.float32)
        return self._cache["reference_vertices"]

    def vertices(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, V, 3) float32 the transferred bodies of these frames, in camera space."""
        posed = self.track.vertices(self.body, slice(start, stop), rest=self._rest())
        return posed.cpu().numpy().astype(np.float32)

    def iter_vertices(self, chunk: int = 32) -> Iterator[np.ndarray]:
        """Frame after frame, (V, 3) vertices (posed ``chunk`` frames at a time)."""
        for start in range(0, self.num_frames, chunk):
            yield from self.vertices(start, min(start + chunk, self.num_frames))

    def keypoints(self) -> np.ndarray:
        """(T, 23, 2) the transferred bodies' COCO body + feet keypoints, in output pixels."""
        with torch.no_grad():
            posed = self.body.pose(self._rest(), *self.track.tensors(self.body), with_vertices=False)
        return project(self.camera, posed.keypoints.cpu().numpy())[0]

    def renderer(self, scale: int = 1) -> tuple[Renderer, Camera]:
        """A new renderer of this topology and the output camera shrunk ``scale`` times."""
        width, height = self.size
        camera = self.camera if scale == 1 else self.camera.resized(width // scale, height // scale)
        return Renderer(self.faces, self.vertex_parts), camera

    @property
    def reference_render(self) -> RenderedFrame:
        """The reference body's ray cast at the output size: the surface point every reference pixel sees."""
        if "reference_render" not in self._cache:
            renderer, camera = self.renderer()
            self._cache["reference_render"] = renderer.render(self.reference_vertices, camera)
        return self._cache["reference_render"]

    @property
    def reference_projection(self) -> tuple[np.ndarray, np.ndarray]:
        """(V, 2) pixel position and (V,) depth of every reference vertex."""
        if "reference_projection" not in self._cache:
            self._cache["reference_projection"] = project(self.camera, self.reference_vertices)
        return self._cache["reference_projection"]

    @property
    def mirror(self) -> np.ndarray:
        """(V,) the left/right twin of every vertex."""
        if "mirror" not in self._cache:
            self._cache["mirror"] = mirror_vertices(self._rest().vertices[0].cpu().numpy())
        return self._cache["mirror"]


def snap_keypoints(keypoints: np.ndarray, body_keypoints: np.ndarray) -> np.ndarray:
    """(T, 133, 3) keypoints moved onto the body: the 23 body + feet points take the body's projected
    positions (scores kept), each hand moves with its wrist and the face with the nose, so skeleton
    guidance and the body's renders agree.

    body_keypoints: (T, 23, 2) from ``BodyMotion.keypoints``.
    """
    out = np.array(keypoints, np.float32, copy=True)
    shift_hand = {LEFT_HAND_ROOT: L_WRIST, RIGHT_HAND_ROOT: R_WRIST}
    moves = [(root, root + 21, wrist) for root, wrist in shift_hand.items()]
    moves.append((FACE.start, FACE.stop, NOSE))
    for start, stop, anchor in moves:
        delta = body_keypoints[:, anchor] - out[:, anchor, :2]
        out[:, start:stop, :2] += delta[:, None]
    out[:, : body_keypoints.shape[1], :2] = body_keypoints
    return out


def offbody_reach(person: np.ndarray, body: np.ndarray, quantile: float = 0.95) -> float:
    """How far (pixels) the person reaches beyond the naked body: a quantile of the off-body distances."""
    outside = person & ~body
    if not outside.any() or not body.any():
        return 0.0
    distance = cv2.distanceTransform((~body).astype(np.uint8), cv2.DIST_L2, 5)
    return float(np.quantile(distance[outside], quantile))


def nearest_pixel(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel, the distance to the nearest ``mask`` pixel and that pixel's index in
    ``np.flatnonzero(mask)`` order (distance 0 and its own index on the mask)."""
    distance, labels = cv2.distanceTransformWithLabels(
        (~mask).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    # Labels number the zero pixels of the input (the mask) from 1 in scan order, as flatnonzero does.
    return distance, labels - 1


def falloff(distance: np.ndarray, reach: float) -> np.ndarray:
    """1 up to ``reach`` pixels from the body, a cosine down to 0 at ``2 * reach``."""
    reach = max(reach, 1.0)
    t = np.clip((distance - reach) / reach, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


class DenseField:
    """Binds reference pixels to the body once; ``flow(vertices)`` is the field to one frame's body.

    person: (H, W) the reference person's mask (uint8 0..255 or bool). Body pixels are those the reference
    ray cast hits (the person or not: the body's own surface); off-body person pixels within ``2 * reach``
    of the body follow it with ``falloff``; everything else stays at zero flow.
    """

    def __init__(self, motion: BodyMotion, person: np.ndarray, reach: float | None = None) -> None:
        self.motion = motion
        render = motion.reference_render
        body = render.mask
        person = person > 127 if person.dtype != bool else person
        self.size = motion.size
        self.reach = offbody_reach(person, body) if reach is None else reach
        ys, xs = np.nonzero(body)
        self.body_pixels = np.stack([xs, ys], 1).astype(np.float32)
        self.body_index = np.flatnonzero(body)
        self.triangles = motion.faces[render.face[ys, xs]]
        self.bary = render.bary[ys, xs]
        self.body_parts = render.part[ys, xs].astype(np.int64)
        distance, nearest = nearest_pixel(body)
        off = person & ~body & (distance < 2 * max(self.reach, 1.0))
        oy, ox = np.nonzero(off)
        self.off_index = np.flatnonzero(off)
        self.off_pixels = np.stack([ox, oy], 1).astype(np.float32)
        self.off_anchor = nearest[oy, ox]  # index into the body pixels
        self.off_weight = falloff(distance[oy, ox], self.reach)
        self.uv_reference = motion.reference_projection[0]

    def positions(self, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where the body pixels and the moving off-body pixels land in the frame of these (V, 3) vertices.

        Positions are in pixel-index units (pixel (x, y) covers x - 0.5 .. x + 0.5), like the flow.
        """
        uv, _ = project(self.motion.camera, interpolate(vertices, self.triangles, self.bary))
        uv -= 0.5  # the camera's pixel (x, y) is centred at x + 0.5
        if not len(self.off_index):
            return uv, np.zeros((0, 2), np.float32)
        uv_frame, _ = project(self.motion.camera, vertices)
        affines = part_affines(self.uv_reference, uv_frame, self.motion.vertex_parts)
        linear = affines[self.body_parts[self.off_anchor], :, :2].astype(np.float32)
        offset = self.off_pixels - self.body_pixels[self.off_anchor]
        rigid = uv[self.off_anchor] + np.einsum("nij,nj->ni", linear, offset)
        moved = self.off_pixels + self.off_weight[:, None] * (rigid - self.off_pixels)
        return uv, moved

    def flow(self, vertices: np.ndarray) -> np.ndarray:
        """(H, W, 2) float32: reference pixel -> its position in the frame of these vertices, minus itself."""
        width, height = self.size
        body_uv, off_uv = self.positions(vertices)
        out = np.zeros((height * width, 2), np.float32)
        out[self.body_index] = body_uv - self.body_pixels
        out[self.off_index] = off_uv - self.off_pixels
        return out.reshape(height, width, 2)
