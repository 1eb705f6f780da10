"""Girth: how much thicker or thinner than the fitted body the reference person is, along each limb.

A body model's few shape parameters (Anny's six phenotypes, SMPL's betas) cannot follow a slim or broad
build, a skirt or baggy trousers, so the fitted body's silhouette is narrower or wider than the person's.
A girth profile scales the cross-section of the torso and of each limb segment about its bone axis, at
``STATIONS`` along the bone (linearly between them). Width and depth scale alike, so a body turned
side-on keeps the thickness its front view showed, and a side-on reference measures its depth.

The profile is measured on the reference (``measure_girth``): at each station, the person mask's width
across the projected bone over the rendered body's width there (the runs of mask pixels through the
bone's point along the bone's normal), kept within ``GIRTH_RANGE`` (``HEAD_RANGE``). A person more than
``GIRTH_RANGE[1]`` times as wide (a dress, long hair, an arm against the part) is not measured there: those
pixels follow the body as before (the warp engine's off-body ring). A station the reference does not show
(another part in front, off the picture) takes the left/right twin's value, else the part's median.
``inflate`` applies a profile to posed vertices; the displacement is smoothed over the mesh so parts with
different profiles meet without a step.
"""

from __future__ import annotations

import functools

import numpy as np

from animate.body.camera import Camera
from animate.body.parts import MIRROR_PART, NUM_PARTS, PART_NAMES

#: Positions along a bone (0 its start joint, 1 its end joint) where the girth is measured.
STATIONS = np.linspace(0.1, 0.9, 5).astype(np.float32)
GIRTH_RANGE = (0.7, 1.5)
HEAD_RANGE = (1.0, 1.5)  # hair adds to a head; a narrower head is a misfit, and narrowing hides the face
SMOOTHING_STEPS = 4  # neighbour-averaging passes over the displacement

# Posed.joints indices (0 the root, then 1 + model.JOINT_NAMES index).
_NECK, _HEAD = 3, 4
_L_SHOULDER, _L_ELBOW, _L_WRIST = 6, 7, 8
_R_SHOULDER, _R_ELBOW, _R_WRIST = 10, 11, 12
_L_HIP, _L_KNEE, _L_ANKLE = 13, 14, 15
_R_HIP, _R_KNEE, _R_ANKLE = 16, 17, 18
_HIPS = -1  # the hips' middle (the torso's axis runs from there to the neck)
_CROWN = -2  # the head's axis: from the head joint on along the neck, twice the neck's length

TORSO_PARTS = tuple(PART_NAMES.index(n) for n in ("pelvis", "spine1", "spine2", "spine3"))
#: Scaled parts and their bone (start, end joint); the collars follow the torso.
BONES: dict[int, tuple[int, int]] = {
    **{p: (_HIPS, _NECK) for p in TORSO_PARTS},
    PART_NAMES.index("head"): (_HEAD, _CROWN),
    PART_NAMES.index("neck"): (_NECK, _HEAD),
    PART_NAMES.index("left_collar"): (_HIPS, _NECK),
    PART_NAMES.index("right_collar"): (_HIPS, _NECK),
    PART_NAMES.index("left_hip"): (_L_HIP, _L_KNEE),
    PART_NAMES.index("right_hip"): (_R_HIP, _R_KNEE),
    PART_NAMES.index("left_knee"): (_L_KNEE, _L_ANKLE),
    PART_NAMES.index("right_knee"): (_R_KNEE, _R_ANKLE),
    PART_NAMES.index("left_shoulder"): (_L_SHOULDER, _L_ELBOW),
    PART_NAMES.index("right_shoulder"): (_R_SHOULDER, _R_ELBOW),
    PART_NAMES.index("left_elbow"): (_L_ELBOW, _L_WRIST),
    PART_NAMES.index("right_elbow"): (_R_ELBOW, _R_WRIST),
}
#: The parts measured on their own (the torso as one, under its first part; the collars take the torso's).
MEASURED = (TORSO_PARTS[0], *(p for p in BONES if p not in TORSO_PARTS and "collar" not in PART_NAMES[p]))


def neutral() -> np.ndarray:
    """(24, len(STATIONS)) float32 the profile that changes nothing."""
    return np.ones((NUM_PARTS, len(STATIONS)), np.float32)


def bone_ends(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 24, 3) start and end of every part's bone from (..., J + 1, 3) posed joints (parts without a
    bone get a zero-length one at the root: nothing scales them)."""
    hips = 0.5 * (joints[..., _L_HIP, :] + joints[..., _R_HIP, :])
    start = np.repeat(joints[..., :1, :], NUM_PARTS, axis=-2)
    end = start.copy()
    crown = joints[..., _HEAD, :] + 2.0 * (joints[..., _HEAD, :] - joints[..., _NECK, :])
    for part, (a, b) in BONES.items():
        start[..., part, :] = hips if a == _HIPS else joints[..., a, :]
        end[..., part, :] = crown if b == _CROWN else joints[..., b, :]
    return start, end


def run_width(mask: np.ndarray, point: np.ndarray, normal: np.ndarray, limit: float) -> float:
    """Length (pixels) of the run of mask pixels through ``point`` along ``normal`` (unit), looked for up to
    ``limit`` pixels each way; nan when the point is off the mask."""
    steps = np.arange(-limit, limit + 0.25, 0.5, dtype=np.float32)
    points = np.rint(point[None] + steps[:, None] * normal[None]).astype(np.int64)
    height, width = mask.shape
    inside = (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
    on = np.zeros(len(steps), bool)
    on[inside] = mask[points[inside, 1], points[inside, 0]]
    centre = len(steps) // 2
    if not on[centre]:
        return float("nan")
    off_before, off_after = np.flatnonzero(~on[:centre]), np.flatnonzero(~on[centre:])
    lo = off_before[-1] + 1 if len(off_before) else 0
    hi = centre + off_after[0] if len(off_after) else len(steps)
    return 0.5 * float(hi - lo)


def measure_girth(
    joints: np.ndarray, camera: Camera, person: np.ndarray, body_mask: np.ndarray, part: np.ndarray
) -> np.ndarray:
    """(24, len(STATIONS)) girth profile of a reference: (J + 1, 3) posed joints of its fitted body (camera
    space), its (H, W) person mask and the body's render there (mask and part labels)."""
    person = person > 127 if person.dtype != bool else person
    start, end = bone_ends(joints)
    z = np.maximum(np.stack([start[..., 2], end[..., 2]]), 1e-3)
    uv_start = np.stack(
        [start[:, 0] / z[0] * camera.fx + camera.cx, start[:, 1] / z[0] * camera.fy + camera.cy], -1
    )
    uv_end = np.stack(
        [end[:, 0] / z[1] * camera.fx + camera.cx, end[:, 1] / z[1] * camera.fy + camera.cy], -1
    )
    uv_start, uv_end = uv_start - 0.5, uv_end - 0.5  # pixel (x, y) is centred at x + 0.5 in the camera
    limit = 0.25 * max(person.shape)
    profile = np.full((NUM_PARTS, len(STATIONS)), np.nan, np.float32)
    for p in MEASURED:
        group = TORSO_PARTS if p in TORSO_PARTS else (p,)
        a, b = uv_start[p], uv_end[p]
        length = float(np.linalg.norm(b - a))
        if length < 4:
            continue
        normal = np.array([a[1] - b[1], b[0] - a[0]], np.float32) / length
        for k, t in enumerate(STATIONS):
            point = a + t * (b - a)
            x, y = round(float(point[0])), round(float(point[1]))
            if not (0 <= x < person.shape[1] and 0 <= y < person.shape[0]) or part[y, x] not in group:
                continue  # off the picture, or another part in front of this one
            body_width = run_width(body_mask, point, normal, limit)
            person_width = run_width(person, point, normal, limit)
            if np.isfinite(body_width) and np.isfinite(person_width) and body_width > 0:
                ratio = person_width / body_width
                if ratio > GIRTH_RANGE[1]:
                    continue  # a dress, long hair, an arm against it: the ring's business, not the body's
                limits = HEAD_RANGE if PART_NAMES[p] == "head" else GIRTH_RANGE
                profile[p, k] = np.clip(ratio, *limits)
    for p in MEASURED:  # stations not seen: the twin's, else the part's median, else 1
        twin = MIRROR_PART[p]
        missing = np.isnan(profile[p])
        profile[p, missing] = profile[twin, missing]
        missing = np.isnan(profile[p])
        seen = profile[p, ~missing]
        profile[p, missing] = float(np.median(seen)) if len(seen) else 1.0
    collars = [PART_NAMES.index("left_collar"), PART_NAMES.index("right_collar")]
    profile[[*TORSO_PARTS, *collars]] = profile[TORSO_PARTS[0]]
    profile[np.isnan(profile)] = 1.0
    return profile


@functools.lru_cache(maxsize=4)
def _smoothing(faces_key: bytes, num_vertices: int):
    """Row-normalised (V, V) sparse average over each vertex and its mesh neighbours."""
    from scipy.sparse import coo_matrix, identity

    faces = np.frombuffer(faces_key, np.int32).reshape(-1, 3)
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    adjacency = coo_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(num_vertices,) * 2).tocsr()
    adjacency.data[:] = 1.0  # shared edges counted once
    adjacency = adjacency + identity(num_vertices, np.float32, format="csr")
    degree = np.asarray(adjacency.sum(1)).ravel()
    return (adjacency.multiply(1.0 / degree[:, None])).tocsr().astype(np.float32)


def inflate(
    vertices: np.ndarray, joints: np.ndarray, profile: np.ndarray, vertex_parts: np.ndarray, faces: np.ndarray
) -> np.ndarray:
    """(B, V, 3) posed vertices with each part's cross-section scaled about its bone by the ``profile``
    (24, len(STATIONS)); (B, J + 1, 3) the same frames' posed joints."""
    profile = np.asarray(profile, np.float32)
    if np.all(profile == 1.0):
        return vertices
    vertices = np.asarray(vertices, np.float32)
    start, end = bone_ends(np.asarray(joints, np.float32))  # (B, 24, 3)
    axis = end - start
    axis /= np.maximum((axis * axis).sum(-1, keepdims=True), 1e-12)  # so that t = (v - a) . axis
    a = start[:, vertex_parts]  # (B, V, 3)
    rel = vertices - a
    t = np.clip((rel * axis[:, vertex_parts]).sum(-1), 0.0, 1.0)
    centre = a + t[..., None] * (end - start)[:, vertex_parts]
    # Piecewise linear in t between the (evenly spaced) stations, constant beyond the first and last.
    spacing = float(STATIONS[1] - STATIONS[0])
    position = np.clip((t - STATIONS[0]) / spacing, 0.0, len(STATIONS) - 1.0)
    low = np.minimum(position.astype(np.int64), len(STATIONS) - 2)
    frac = position - low
    flat = profile.ravel()
    base = vertex_parts.astype(np.int64) * len(STATIONS)
    gain = flat[base + low] * (1.0 - frac) + flat[base + low + 1] * frac
    offset = (gain[..., None] - 1.0) * (vertices - centre)
    smooth = _smoothing(np.ascontiguousarray(faces, np.int32).tobytes(), vertices.shape[1])
    batch, count = offset.shape[:2]
    columns = np.ascontiguousarray(offset.transpose(1, 0, 2).reshape(count, -1))
    for _ in range(SMOOTHING_STEPS):
        columns = smooth @ columns
    return vertices + columns.reshape(count, batch, 3).transpose(1, 0, 2)
