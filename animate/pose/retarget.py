"""Retargeting: the driving motion, re-drawn with the reference person's proportions and placement.

``retarget`` (default) measures the driver against its *base frame*: the driving frame whose pose is most
like the reference's once position and size are removed (FOMM's "best frame"; for a clip whose first frame
is the reference, that frame). It walks a kinematic tree over the 133 keypoints from a root (pelvis, else
neck, else nose): every bone keeps the driving frame's direction and its length is the driving length times
that bone's ratio, reference length / base-frame length (Wan-Animate's limb ratios), so a bone the driver
foreshortens shortens the same way and the same person retargets onto itself unchanged. A hand takes one
ratio for all its bones (sum over its bones seen on both sides), ratios stay within ``RATIO_RANGE`` of the
body ratio. The head (eyes, ears, the 68 face points) moves as a whole around the placed nose: the
reference's head turned and scaled by the driver's head motion since the base frame (a similarity fit),
plus the driver's own change of shape (mouth, blinks, a turn), mapped into the reference's face by the
similarity from the driver's base head to the reference's. The root follows the driver's displacement from
the base frame scaled by the torso ratio, starting at the reference's root; with feet visible on both
sides, the lowest foot follows the driver's ground line instead, so legs of a different length neither
float nor sink. Bones the reference does not show (a head-and-shoulders photo has no legs) take the body
ratio. ``global_fit`` is MimicMotion's alignment (one scale and offset for the clip), for parity.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from animate.face.align import umeyama
from animate.pose.errors import PoseError
from animate.pose.layout import (
    FACE,
    HAND_EDGES,
    L_ANKLE,
    L_EAR,
    L_ELBOW,
    L_EYE,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    LEFT_HAND_ROOT,
    NOSE,
    NUM_KEYPOINTS,
    R_ANKLE,
    R_EAR,
    R_ELBOW,
    R_EYE,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
    RIGHT_HAND_ROOT,
    openpose18,
)
from animate.pose.types import Pose, PoseSequence

NECK, PELVIS = NUM_KEYPOINTS, NUM_KEYPOINTS + 1  # virtual joints appended after the 133 keypoints
GROUND = (L_ANKLE, R_ANKLE, *range(17, 23))  # ankles, toes, heels

BONES: tuple[tuple[int, int], ...] = (
    (PELVIS, L_HIP), (PELVIS, R_HIP), (PELVIS, NECK),
    (NECK, L_SHOULDER), (NECK, R_SHOULDER), (NECK, NOSE),
    (NOSE, L_EYE), (NOSE, R_EYE), (L_EYE, L_EAR), (R_EYE, R_EAR),
    (L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST),
    (L_HIP, L_KNEE), (L_KNEE, L_ANKLE), (R_HIP, R_KNEE), (R_KNEE, R_ANKLE),
    (L_ANKLE, 17), (L_ANKLE, 18), (L_ANKLE, 19), (R_ANKLE, 20), (R_ANKLE, 21), (R_ANKLE, 22),
    (L_WRIST, LEFT_HAND_ROOT), (R_WRIST, RIGHT_HAND_ROOT),
    *((LEFT_HAND_ROOT + a, LEFT_HAND_ROOT + b) for a, b in HAND_EDGES),
    *((RIGHT_HAND_ROOT + a, RIGHT_HAND_ROOT + b) for a, b in HAND_EDGES),
    *((NOSE, i) for i in range(FACE.start, FACE.stop)),  # the face as a star around the nose
)  # fmt: skip

#: The head moves as one piece around the nose: eyes, ears and the 68 face points.
HEAD = (L_EYE, R_EYE, L_EAR, R_EAR, *range(FACE.start, FACE.stop))
#: The head points that move rigidly with it (nose, eyes, ears; iBUG 27-47: nose bridge, nostrils, eye
#: corners and lids): the head's motion is fitted on these, so an opening mouth or a raised brow is not
#: read as the head turning or growing.
HEAD_RIGID = (NOSE, L_EYE, R_EYE, L_EAR, R_EAR, *range(FACE.start + 27, FACE.start + 48))
#: Each hand's joints below the wrist (its root and 20 finger joints): one ratio per hand.
HANDS = (
    tuple(range(LEFT_HAND_ROOT, LEFT_HAND_ROOT + 21)),
    tuple(range(RIGHT_HAND_ROOT, RIGHT_HAND_ROOT + 21)),
)
#: The body points (and virtual neck, pelvis) that choose the base frame.
MATCH_POINTS = (*range(17), NECK, PELVIS)
#: A bone's (or the head's, or a hand's) ratio stays within this factor of the body ratio.
RATIO_RANGE = 3.0

Anchor = Literal["auto", "hips", "feet"]


@dataclass(frozen=True)
class RetargetOptions:
    threshold: float = 0.3  # keypoints below this score count as not seen
    anchor: Anchor = "auto"  # "auto": feet when both sides show them, else hips (or the root)
    min_root_fraction: float = 0.5  # the root must be seen in this share of driving frames


def _extended(keypoints: np.ndarray) -> np.ndarray:
    """(..., 133, 3) -> (..., 135, 3) with the neck and pelvis midpoints (score: the weaker side)."""
    sh = keypoints[..., [L_SHOULDER, R_SHOULDER], :]
    hp = keypoints[..., [L_HIP, R_HIP], :]
    mids = []
    for pair in (sh, hp):
        mid = pair.mean(axis=-2, keepdims=True)
        mid[..., 2] = pair[..., 2].min(axis=-1, keepdims=True)
        mids.append(mid)
    return np.concatenate([keypoints, *mids], axis=-2)


def _tree(root: int) -> tuple[list[int], dict[int, int]]:
    """Breadth-first order from ``root`` and each node's parent, over the undirected bone graph."""
    neighbours: dict[int, list[int]] = {}
    for a, b in BONES:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    order, parent, queue = [root], {}, deque([root])
    while queue:
        node = queue.popleft()
        for nxt in neighbours[node]:
            if nxt != root and nxt not in parent:
                parent[nxt] = node
                order.append(nxt)
                queue.append(nxt)
    return order, parent


def _median_length(points: np.ndarray, a: int, b: int, threshold: float) -> float:
    """Median |a-b| over the frames (rows) where both are seen; nan when never."""
    both = (points[:, a, 2] >= threshold) & (points[:, b, 2] >= threshold)
    if not both.any():
        return float("nan")
    return float(np.median(np.linalg.norm(points[both, a, :2] - points[both, b, :2], axis=1)))


def body_scale_ratio(reference: np.ndarray, driving: np.ndarray, threshold: float = 0.3) -> float:
    """Reference size / driver size from the torso, else shoulder width, else eye distance (px per px)."""
    for a, b in ((NECK, PELVIS), (L_SHOULDER, R_SHOULDER), (L_EYE, R_EYE)):
        ref = _median_length(reference[None], a, b, threshold)
        drv = _median_length(driving, a, b, threshold)
        if np.isfinite(ref) and np.isfinite(drv) and ref > 1 and drv > 1:
            return ref / drv
    raise PoseError("retarget_failed", "reference and driving video share no torso, shoulders or eyes")


def _ground(points: np.ndarray, threshold: float) -> float | None:
    """Lowest (largest y) foot point seen in one frame's keypoints."""
    feet = points[list(GROUND)]
    feet = feet[feet[:, 2] >= threshold]
    return float(feet[:, 1].max()) if len(feet) else None


def _length(points: np.ndarray, a: int, b: int, threshold: float) -> float:
    """|a-b| in one frame's keypoints; nan unless both are seen."""
    if points[a, 2] < threshold or points[b, 2] < threshold:
        return float("nan")
    return float(np.linalg.norm(points[a, :2] - points[b, :2]))


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """The 2x2 rotation-and-scale that best maps the centred ``src`` points onto the centred ``dst`` points
    (``animate.face.align.umeyama``: least squares, no reflection); None when ``src`` has no extent."""
    if float(((src - src.mean(axis=0)) ** 2).sum()) < 1e-9:
        return None
    return umeyama(src, dst)[:, :2]


def _base_frame(ref: np.ndarray, drv: np.ndarray, root: int, threshold: float) -> int:
    """The driving frame (one that shows the root) whose body is most like the reference's: both sets of
    ``MATCH_POINTS`` centred and divided by their RMS radius, mean squared distance over the reference's
    points, a point the frame does not show counting 1. Ties go to the earliest frame."""
    frames = np.flatnonzero(drv[:, root, 2] >= threshold)
    ids = [i for i in MATCH_POINTS if ref[i, 2] >= threshold]
    best, best_cost = int(frames[0]), np.inf
    for t in frames:
        seen = [i for i in ids if drv[t, i, 2] >= threshold]
        if len(seen) < 3:
            continue
        a = ref[seen, :2] - ref[seen, :2].mean(axis=0)
        b = drv[t, seen, :2] - drv[t, seen, :2].mean(axis=0)
        na, nb = np.sqrt((a**2).sum(axis=1).mean()), np.sqrt((b**2).sum(axis=1).mean())
        if na < 1e-6 or nb < 1e-6:
            continue
        cost = (float(((a / na - b / nb) ** 2).sum()) + len(ids) - len(seen)) / len(ids)
        if cost < best_cost:
            best, best_cost = int(t), cost
    return best


def _bone_ratios(
    ref: np.ndarray, drv: np.ndarray, base: int, parent: dict[int, int], scale: float, threshold: float
) -> np.ndarray:
    """Per child joint: reference bone length / the driver's (its base frame's, else its median), within
    ``RATIO_RANGE`` of ``scale``; a hand's bones share one ratio; ``scale`` where either side lacks it."""
    ratio = np.full(len(ref), scale)
    ref_len, drv_len = np.full(len(ref), np.nan), np.full(len(ref), np.nan)
    for child, par in parent.items():
        ref_len[child] = _length(ref, child, par, threshold)
        drv_len[child] = _length(drv[base], child, par, threshold)
        if not np.isfinite(drv_len[child]):
            drv_len[child] = _median_length(drv, child, par, threshold)
    both = np.isfinite(ref_len) & np.isfinite(drv_len) & (drv_len > 1e-6)
    ratio[both] = ref_len[both] / drv_len[both]
    for hand in HANDS:
        bones = [i for i in hand if both[i]]
        if bones:
            ratio[list(hand)] = ref_len[bones].sum() / drv_len[bones].sum()
    return np.clip(ratio, scale / RATIO_RANGE, scale * RATIO_RANGE)


def _clip_scale(matrix: np.ndarray, low: float, high: float) -> np.ndarray:
    size = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    return matrix * (np.clip(size, low, high) / size)


def _head(
    frame: np.ndarray, nose: np.ndarray, ref: np.ndarray, base: np.ndarray, fit: np.ndarray, thr: float
) -> np.ndarray:
    """The ``HEAD`` points of one frame around the placed ``nose``: the reference's head turned and scaled
    by the driver's head motion since its base frame (``motion``, fitted on ``HEAD_RIGID``), plus the
    driver's change of shape mapped by ``fit`` (driver's base head -> reference head). Points the reference
    does not show: the driver's own, mapped by ``fit``; shown by the reference but not the base frame: the
    reference's, moved rigidly."""
    head = list(HEAD)
    ref_seen = (ref[head, 2] >= thr) & (ref[NOSE, 2] >= thr)
    base_seen = (base[head, 2] >= thr) & (base[NOSE, 2] >= thr)
    d_now = frame[head, :2] - frame[NOSE, :2]
    out = nose + d_now @ fit.T
    common = [i for i in HEAD_RIGID if base[i, 2] >= thr and frame[i, 2] >= thr]
    motion = _similarity(base[common, :2], frame[common, :2]) if len(common) >= 2 else None
    if motion is None:
        return out
    r = ref[head, :2] - ref[NOSE, :2]
    d_base = base[head, :2] - base[NOSE, :2]
    full = ref_seen & base_seen
    out[full] += (r[full] - d_base[full] @ fit.T) @ motion.T
    rigid = ref_seen & ~base_seen
    out[rigid] = nose + r[rigid] @ motion.T
    return out


def retarget(
    driving: PoseSequence,
    reference: Pose,
    ref_width: int,
    ref_height: int,
    options: RetargetOptions | None = None,
) -> PoseSequence:
    """The driving poses in the reference's proportions, placed on the reference image (its pixels)."""
    options = options or RetargetOptions()
    thr = options.threshold
    ref = _extended(reference.keypoints[None])[0]
    drv = _extended(driving.keypoints)  # undetected frames: all zero (PoseSequence.keypoints)
    clip_scale = body_scale_ratio(ref, drv, thr)
    root = next(
        (
            r
            for r in (PELVIS, NECK, NOSE)
            if ref[r, 2] >= thr
            and (drv[:, r, 2] >= thr).any()
            and (drv[:, r, 2] >= thr).mean() >= options.min_root_fraction
        ),
        None,
    )
    if root is None:
        raise PoseError("retarget_failed", "reference and driving video share no pelvis, neck or nose")
    base = _base_frame(ref, drv, root, thr)
    try:  # the base frame is the driver in the reference's pose: its torso is the one to compare
        scale = body_scale_ratio(ref, drv[base : base + 1], thr)
    except PoseError:
        scale = clip_scale
    order, parent = _tree(root)
    ratio = _bone_ratios(ref, drv, base, parent, scale, thr)
    head_ids = [NOSE, *HEAD]
    shared = [i for i in head_ids if ref[i, 2] >= thr and drv[base, i, 2] >= thr]
    fit = _similarity(drv[base, shared, :2], ref[shared, :2]) if len(shared) >= 3 else None
    fit = np.eye(2) * scale if fit is None else _clip_scale(fit, scale / RATIO_RANGE, scale * RATIO_RANGE)
    drv_root0 = drv[base, root, :2]
    use_feet = options.anchor != "hips" and _ground(ref, thr) is not None
    if options.anchor == "feet" and not use_feet:
        raise PoseError("retarget_failed", "anchor 'feet' needs the reference's feet")
    grounds = [_ground(frame, thr) for frame in drv]
    drv_ground0 = (
        grounds[base] if grounds[base] is not None else next((g for g in grounds if g is not None), None)
    )
    ref_ground = _ground(ref, thr)

    out = np.zeros((len(drv), NUM_KEYPOINTS, 3), np.float32)
    for t, frame in enumerate(drv):
        if not driving.detected[t]:
            continue
        pts = np.zeros_like(frame)
        pts[:, 2] = frame[:, 2]
        placed = np.zeros(len(frame), bool)
        if frame[root, 2] >= thr:
            pts[root, :2] = ref[root, :2] + (frame[root, :2] - drv_root0) * scale
            placed[root] = True
        else:
            # Without the root this frame is only scaled and shifted, as a whole.
            pts[:, :2] = ref[root, :2] + (frame[:, :2] - drv_root0) * scale
            out[t] = pts[:NUM_KEYPOINTS]
            continue
        for node in order[1:]:
            anchor = parent[node]
            while not placed[anchor]:
                anchor = parent[anchor]
            delta = frame[node, :2] - frame[anchor, :2]
            if frame[node, 2] >= thr and anchor == parent[node]:
                if np.hypot(*delta) > 1e-6:
                    pts[node, :2] = pts[anchor, :2] + delta * ratio[node]
                else:  # a zero-length driving bone has no direction: borrow the reference's
                    pts[node, :2] = pts[anchor, :2] + (ref[node, :2] - ref[anchor, :2])
                placed[node] = True
            else:
                pts[node, :2] = pts[anchor, :2] + delta * scale
                placed[node] = frame[node, 2] >= thr
        if frame[NOSE, 2] >= thr:
            pts[head_ids[1:], :2] = _head(frame, pts[NOSE, :2], ref, drv[base], fit, thr)
        if use_feet and grounds[t] is not None and drv_ground0 is not None and ref_ground is not None:
            target = ref_ground + (grounds[t] - drv_ground0) * scale
            current = _ground(pts, thr)
            if current is not None:
                pts[:, 1] += target - current
        out[t] = pts[:NUM_KEYPOINTS]
    result = driving.with_keypoints(out)
    frames = [replace(p, mask=None) for p in result.frames]
    return PoseSequence(frames, ref_width, ref_height, driving.fps, {"retarget": "bones", "scale": scale})


# MimicMotion fits on these OpenPose-18 points: nose, neck, shoulders, hips, knees, ankles, eyes, ears.
GLOBAL_FIT_POINTS = (0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)


def global_fit(
    driving: PoseSequence, reference: Pose, ref_width: int, ref_height: int, threshold: float = 0.3
) -> PoseSequence:
    """MimicMotion's alignment (``get_video_pose``): one linear map for the whole clip, in coordinates
    normalised by each image's size.

    y: ``np.polyfit`` of the driving y onto the reference y over the ``GLOBAL_FIT_POINTS`` the reference shows
    (score > ``threshold``), pooled over every frame with a person (the driving points whatever their score);
    x: the scale ``ay * (fw / fh) * (ref_height / ref_width)`` (the same pixel scale as y) and the mean
    offset. Every keypoint of every frame is mapped.
    """
    ref18 = openpose18(reference.keypoints)
    ids = [i for i in GLOBAL_FIT_POINTS if ref18[i, 2] > threshold]
    if len(ids) < 2 or not len(driving):
        raise PoseError("retarget_failed", "the reference shows too few head and torso points to fit")
    if not driving.detected.any():
        raise PoseError("retarget_failed", "no driving frame shows a person")
    # float32 normalised coordinates, as DWPose hands them out
    size = np.array([driving.width, driving.height], np.float32)
    ref_size = np.array([ref_width, ref_height], np.float32)
    ref = ref18[ids, :2] / ref_size
    drv = np.stack([openpose18(k)[ids, :2] for k in driving.keypoints[driving.detected]]) / size
    ay, by = np.polyfit(drv[:, :, 1].ravel(), np.tile(ref[:, 1], len(drv)), 1)
    ax = ay / (driving.height / driving.width / ref_height * ref_width)
    bx = np.mean(np.tile(ref[:, 0], len(drv)) - drv[:, :, 0].ravel() * ax)
    kp = driving.keypoints.copy()
    kp[..., :2] = ((kp[..., :2] / size) * np.array([ax, ay]) + np.array([bx, by])) * ref_size
    result = driving.with_keypoints(kp)
    frames = [replace(p, mask=None) for p in result.frames]
    meta = {"retarget": "global_fit", "scale": float(ay * ref_height / driving.height)}
    return PoseSequence(frames, ref_width, ref_height, driving.fps, meta)
