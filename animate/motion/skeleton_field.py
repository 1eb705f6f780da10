"""A dense motion field from the 2D skeleton alone: linear blend skinning of reference pixels onto bones.

Each reference person pixel is bound to the bones near it (Gaussian weights on its distance to each bone
segment). In a target frame every bone carries its pixels along: a limb maps its bone-local frame (along
the bone, normalised by length; across it, in pixels) onto the target bone, so foreshortening stretches a
limb without making it thinner; the torso follows the affine map of shoulders and hips; the head follows
the similarity (rotation, uniform scale, shift) that best maps the reference face's keypoints onto the
frame's, so a tilted head keeps its face unsquashed (the neck-to-nose similarity when fewer than three
face points are seen in both). Bones missing in a frame inherit their parent's motion.

This field needs no body model; ``animate.body`` supplies a 3D-aware field where it is available.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from animate.face.align import umeyama
from animate.pose.layout import (
    FACE,
    L_ANKLE,
    L_BIG_TOE,
    L_EAR,
    L_ELBOW,
    L_EYE,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    LEFT_HAND_ROOT,
    NOSE,
    R_ANKLE,
    R_BIG_TOE,
    R_EAR,
    R_ELBOW,
    R_EYE,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
    RIGHT_HAND_ROOT,
)  # fmt: skip

NECK = -1  # virtual: mid-shoulder
CHIN = FACE.start + 8  # iBUG point 8
MIDDLE_MCP = 9  # middle finger base within a 21-point hand


@dataclass(frozen=True)
class Bone:
    name: str
    start: int
    end: int
    parent: str | None
    layer: int  # drawing order where bones overlap: higher is in front


BONES: tuple[Bone, ...] = (
    Bone("torso", NECK, -2, None, 0),
    Bone("head", NECK, NOSE, "torso", 1),
    Bone("l_thigh", L_HIP, L_KNEE, "torso", 1),
    Bone("r_thigh", R_HIP, R_KNEE, "torso", 1),
    Bone("l_shin", L_KNEE, L_ANKLE, "l_thigh", 2),
    Bone("r_shin", R_KNEE, R_ANKLE, "r_thigh", 2),
    Bone("l_foot", L_ANKLE, L_BIG_TOE, "l_shin", 2),
    Bone("r_foot", R_ANKLE, R_BIG_TOE, "r_shin", 2),
    Bone("l_upper_arm", L_SHOULDER, L_ELBOW, "torso", 3),
    Bone("r_upper_arm", R_SHOULDER, R_ELBOW, "torso", 3),
    Bone("l_forearm", L_ELBOW, L_WRIST, "l_upper_arm", 4),
    Bone("r_forearm", R_ELBOW, R_WRIST, "r_upper_arm", 4),
    Bone("l_hand", L_WRIST, LEFT_HAND_ROOT + MIDDLE_MCP, "l_forearm", 5),
    Bone("r_hand", R_WRIST, RIGHT_HAND_ROOT + MIDDLE_MCP, "r_forearm", 5),
    # Fingers, base to tip (thumb from its CMC joint): bound only within their hand (``_split_fingers``).
    *(
        Bone(f"{side}_hand_{finger}", root + base, root + base + 3, f"{side}_hand", 6)
        for side, root in (("l", LEFT_HAND_ROOT), ("r", RIGHT_HAND_ROOT))
        for finger, base in (("thumb", 1), ("index", 5), ("middle", 9), ("ring", 13), ("pinky", 17))
    ),
)
_INDEX = {bone.name: i for i, bone in enumerate(BONES)}
FACE_POINTS = np.r_[[NOSE, L_EYE, R_EYE, L_EAR, R_EAR], np.arange(FACE.start, FACE.stop)]
HEAD_SCALE = (0.7, 1.4)  # a head turns and scales as a whole, within these limits
HAIR_REACH = 1.6  # hair above the neck up to this many head-disc radii from its centre is the head's
TORSO_POINTS = (L_SHOULDER, R_SHOULDER, L_HIP, R_HIP)


def _point(keypoints: np.ndarray, index: int, threshold: float) -> np.ndarray | None:
    if index == NECK:
        pair = keypoints[[L_SHOULDER, R_SHOULDER]]
        return pair[:, :2].mean(0) if (pair[:, 2] >= threshold).all() else None
    return keypoints[index, :2] if keypoints[index, 2] >= threshold else None


def _is_finger(bone: Bone) -> bool:
    return bone.parent is not None and bone.parent.endswith("_hand")


def _head_root(keypoints: np.ndarray, threshold: float) -> np.ndarray | None:
    """The head bone's start: the neck (mid-shoulder), else, for a picture that cuts a shoulder off, the
    middle of the eyes (the head bone then runs eyes to nose and binds the face, not the chest)."""
    neck = _point(keypoints, NECK, threshold)
    if neck is not None or (keypoints[[L_EYE, R_EYE], 2] < threshold).any():
        return neck
    return keypoints[[L_EYE, R_EYE], :2].astype(np.float64).mean(0)


def _shoulder_strip(keypoints: np.ndarray, threshold: float) -> np.ndarray | None:
    """Without hips, the torso as a (4, 2) polygon: the band below the shoulder line, away from the
    nose, as wide as the shoulders (one shoulder seen: mirrored about the nose); None without either.
    The band starts at the chin where the face's chin point lies above the shoulders (the neck is torso)."""
    shoulders = [i for i in (L_SHOULDER, R_SHOULDER) if keypoints[i, 2] >= threshold]
    nose = keypoints[NOSE, :2].astype(np.float64) if keypoints[NOSE, 2] >= threshold else None
    if not shoulders or (len(shoulders) == 1 and nose is None):
        return None
    a = keypoints[shoulders[0], :2].astype(np.float64)
    b = (
        keypoints[shoulders[-1], :2].astype(np.float64)
        if len(shoulders) == 2
        else np.array([2.0 * nose[0] - a[0], a[1]])
    )
    along = b - a
    if float(np.linalg.norm(along)) < 1.0:
        return None
    down = np.array([-along[1], along[0]]) / float(np.linalg.norm(along))
    if (nose is not None and float((nose - a) @ down) > 0) or (nose is None and down[1] < 0):
        down = -down
    if keypoints[CHIN, 2] >= threshold:
        lift = min(float((keypoints[CHIN, :2] - a) @ down), 0.0)
        a, b = a + lift * down, b + lift * down
    far = 10.0 * float(np.linalg.norm(along)) + 1e4
    return np.array([a, b, b + far * down, a + far * down])


def _below_jaw(keypoints: np.ndarray, pixels: np.ndarray, threshold: float) -> np.ndarray | None:
    """(N,) bool: pixels below the line through the jaw's ends (iBUG 0 and 16, toward the chin) and
    outside the jaw's hull grown by 5% of its width: beside and below the face (shoulders, chest); None
    when the jaw's ends and chin are not seen."""
    jaw = keypoints[FACE.start : FACE.start + 17]
    if (jaw[[0, 8, 16], 2] < threshold).any():
        return None
    a, b = jaw[0, :2].astype(np.float64), jaw[16, :2].astype(np.float64)
    normal = np.array([-(b - a)[1], (b - a)[0]])
    if float((jaw[8, :2] - a) @ normal) < 0:
        normal = -normal
    below = (pixels - a) @ normal > 0
    hull = cv2.convexHull(jaw[jaw[:, 2] >= threshold, :2].astype(np.float32))
    grow = 0.05 * float(np.linalg.norm(b - a))
    near = np.flatnonzero(below)
    signed = np.array([cv2.pointPolygonTest(hull, (float(x), float(y)), True) for x, y in pixels[near]])
    below[near[signed >= -grow]] = False
    return below


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def similarity(src: np.ndarray, dst: np.ndarray, scale_range: tuple[float, float]) -> np.ndarray:
    """Least-squares 2x3 similarity src -> dst (``animate.face.align.umeyama``, no reflection), its scale
    clamped to the range (the shift then maps the centroids onto each other). Points that coincide (or a
    single pair) give no rotation: the identity at the clamped scale 0, mapping the centroids."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    try:
        fitted = umeyama(src, dst)[:, :2]
        scale = float(np.hypot(fitted[0, 0], fitted[1, 0]))
    except ValueError:
        fitted, scale = np.eye(2), 0.0
    rotation = fitted / scale if scale > 1e-12 else np.eye(2)
    linear = float(np.clip(scale, *scale_range)) * rotation
    return np.hstack([linear, (dst.mean(0) - linear @ src.mean(0))[:, None]])


def _affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2x3 affine map src -> dst (>= 3 points)."""
    design = np.hstack([src, np.ones((len(src), 1))])
    solution, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return solution.T


class SkeletonField:
    """Binds reference pixels to bones once; ``positions(target)`` gives where each pixel goes."""

    def __init__(
        self,
        reference_keypoints: np.ndarray,
        pixels: np.ndarray,
        *,
        threshold: float = 0.3,
        sigma: float | None = None,
        bones: tuple[str, ...] | None = None,
    ) -> None:
        """pixels: (N, 2) float x, y of the reference pixels to move (the person and a margin around it).

        bones: bind only to these bones (by name); default all.
        """
        self.threshold = threshold
        self.reference = np.asarray(reference_keypoints, np.float32)
        self.pixels = np.asarray(pixels, np.float64)
        ref = self.reference
        seen = ref[:17, 2] >= threshold
        span = ref[:17][seen, :2]
        height = float(np.ptp(span[:, 1])) if len(span) >= 2 else 100.0
        self.sigma = sigma if sigma is not None else max(4.0, 0.035 * max(height, 50.0))
        self.ref_segments: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        distances = np.full((len(self.pixels), len(BONES)), np.inf)
        torso = self._torso_points(ref)
        corners = torso[[0, 1, 3, 2]] if torso is not None else _shoulder_strip(ref, threshold)
        self._shoulder_band = torso is None and corners is not None
        if corners is not None:
            # Distance to the torso quad (or the band below the shoulders): 0 inside, else to its nearest edge.
            edges = [_segment_distance(self.pixels, corners[i], corners[(i + 1) % 4]) for i in range(4)]
            inside = _inside_polygon(self.pixels, corners)
            distances[:, 0] = np.where(inside, 0.0, np.min(edges, axis=0))
        for i, bone in enumerate(BONES[1:], start=1):
            a = _head_root(ref, threshold) if bone.name == "head" else _point(ref, bone.start, threshold)
            b = _point(ref, bone.end, threshold)
            if a is None or b is None or np.allclose(a, b):
                continue
            self.ref_segments[i] = (a.astype(np.float64), b.astype(np.float64))
            if not _is_finger(bone):
                distances[:, i] = _segment_distance(self.pixels, a, b)
        self._head_pixels: np.ndarray | None = None
        self._claim_head(distances)
        if bones is not None:
            distances[:, [i for i, bone in enumerate(BONES) if bone.name not in bones]] = np.inf
        if not np.isfinite(distances).any():
            # No bone (a face or a single shoulder): the whole picture moves with the keypoints it shows.
            if not (ref[:17, 2] >= threshold).any():
                raise ValueError("the reference has no usable bones")
            distances[:, 0] = 0.0
        # A limb only takes pixels within its own reach; loose clothes beside it stay with the torso.
        nearest_any = distances.min(axis=1)
        for i, (a, b) in self.ref_segments.items():
            if BONES[i].name == "head":
                continue
            length = float(np.linalg.norm(b - a))
            reach = 0.35 * length + self.sigma
            if BONES[i].name.endswith("hand"):
                # A hand bone ends at the knuckles: the fingers reach about one more palm beyond them
                # (where the hand's keypoints were found: only within them, hair may lie beyond).
                beyond = (self.pixels - a) @ (b - a) > length**2
                hand = ref[LEFT_HAND_ROOT if BONES[i].name == "l_hand" else RIGHT_HAND_ROOT :][:21]
                seen = hand[:, 2] >= threshold
                if seen.sum() >= 3:
                    hull = cv2.convexHull(hand[seen, :2].astype(np.float32))
                    near = np.flatnonzero(beyond & (distances[:, i] < 1.1 * length + self.sigma))
                    inside = np.array(
                        [cv2.pointPolygonTest(hull, (float(x), float(y)), True) for x, y in self.pixels[near]]
                    )
                    beyond[:] = False
                    beyond[near[inside >= -0.25 * length]] = True
                reach = np.where(beyond, 1.1 * length + self.sigma, reach)
            far = distances[:, i] > reach
            distances[far & (nearest_any < distances[:, i]) | far & np.isfinite(distances[:, 0]), i] = np.inf
        nearest = distances.min(axis=1, keepdims=True)
        # Weights relative to the nearest bone: sharp bindings, smooth only where bones meet.
        logits = -((distances**2 - nearest**2) / (2 * self.sigma**2))
        weights = np.exp(np.where(np.isfinite(logits), logits, -np.inf))
        weights[weights < 1e-3] = 0.0
        self.weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
        self._split_fingers()
        if self._shoulder_band and self._head_pixels is not None:
            self._soften_neck(0.2 * self._head_radius)
        self.dominant = self.weights.argmax(axis=1)
        self.layer = np.array([BONES[i].layer for i in self.dominant], np.int32)
        self.active = np.flatnonzero(self.weights.any(axis=0))

    def _split_fingers(self) -> None:
        """A hand's weight on each of its pixels is shared between the palm (the hand bone) and its fingers
        by distance to the palm's hull and to each finger (base to tip), with a sigma of 0.12 palms
        (fingers lie about a quarter palm apart), so fingers follow their own keypoints."""
        for side, root in (("l", LEFT_HAND_ROOT), ("r", RIGHT_HAND_ROOT)):
            hand_bone = _INDEX[f"{side}_hand"]
            fingers = [
                i for i, bone in enumerate(BONES) if bone.parent == f"{side}_hand" and i in self.ref_segments
            ]
            rows = np.flatnonzero(self.weights[:, hand_bone] > 0)
            if hand_bone not in self.ref_segments or len(fingers) < 3 or not len(rows):
                continue
            hand = self.reference[root : root + 21]
            seen = hand[:, 2] >= self.threshold
            palm_points = [i for i in (0, 1, 5, 9, 13, 17) if seen[i]]
            if len(palm_points) < 3 or not seen[[0, MIDDLE_MCP]].all():
                continue
            palm = float(np.linalg.norm(hand[MIDDLE_MCP, :2] - hand[0, :2]))
            sigma = max(1.0, 0.12 * palm)
            points = self.pixels[rows]
            hull = cv2.convexHull(hand[palm_points, :2].astype(np.float32))
            distance = np.empty((len(rows), 1 + len(fingers)))
            distance[:, 0] = np.maximum(
                [-cv2.pointPolygonTest(hull, (float(x), float(y)), True) for x, y in points], 0.0
            )
            for k, finger in enumerate(fingers, start=1):
                distance[:, k] = _segment_distance(points, *self.ref_segments[finger])
            nearest = distance.min(axis=1, keepdims=True)
            share = np.exp(-(distance**2 - nearest**2) / (2 * sigma**2))
            share /= share.sum(axis=1, keepdims=True)
            own = self.weights[rows, hand_bone].copy()
            self.weights[rows, hand_bone] = own * share[:, 0]
            for k, finger in enumerate(fingers, start=1):
                self.weights[rows, finger] = own * share[:, k]

    def _arm_pixels(self, distances: np.ndarray) -> dict[str, np.ndarray]:
        """Per side ("l", "r"), the bound pixels that surely lie on that arm's hand or forearm: inside the
        hand's keypoints grown by a quarter palm when the hand was found, else within 0.6 forearm lengths
        of the wrist (a hand is about 0.7 of its forearm); and within 0.2 forearm lengths of the forearm."""
        out = {}
        for side, root, wrist in (("l", LEFT_HAND_ROOT, L_WRIST), ("r", RIGHT_HAND_ROOT, R_WRIST)):
            keep = np.zeros(len(self.pixels), bool)
            forearm = _INDEX[f"{side}_forearm"]
            if forearm in self.ref_segments:
                length = float(np.linalg.norm(np.subtract(*self.ref_segments[forearm])))
                keep |= distances[:, forearm] <= 0.2 * length
                hand = self.reference[root : root + 21]
                seen = hand[:, 2] >= self.threshold
                if seen.sum() >= 3:
                    hull = cv2.convexHull(hand[seen, :2].astype(np.float32))
                    palm = (
                        float(np.linalg.norm(hand[MIDDLE_MCP, :2] - hand[0, :2]))
                        if seen[[0, MIDDLE_MCP]].all()
                        else 0.0
                    )
                    near = np.flatnonzero(
                        np.linalg.norm(self.pixels - hand[seen, :2].mean(0), axis=1) < 3 * length
                    )
                    signed = np.array(
                        [cv2.pointPolygonTest(hull, (float(x), float(y)), True) for x, y in self.pixels[near]]
                    )
                    keep[near[signed >= -0.25 * max(palm, 0.3 * length)]] = True
                else:
                    keep |= np.linalg.norm(self.pixels - self.reference[wrist, :2], axis=1) <= 0.6 * length
            out[side] = keep
        return out

    def head_disc(self, arms: np.ndarray | None = None) -> tuple[np.ndarray, float] | None:
        """(centre, radius) of the reference head with its hair: around the face's keypoints, as wide as
        0.6 ear-to-ear or 0.3 shoulder-to-shoulder distances, or as far as the bound pixels' row through
        the face reaches from it, leaving out ``arms`` pixels (at most one shoulder-to-shoulder distance:
        drawn characters have big heads and big hair); None without a face."""
        ref, threshold = self.reference, self.threshold
        face = [i for i in (NOSE, L_EYE, R_EYE, L_EAR, R_EAR) if ref[i, 2] >= threshold]
        if not face:
            return None
        centre = ref[face, :2].mean(0).astype(np.float64)
        radius, cap = 0.0, np.inf
        for a, b, share in ((L_EAR, R_EAR, 0.6), (L_SHOULDER, R_SHOULDER, 0.3)):
            if ref[a, 2] >= threshold and ref[b, 2] >= threshold:
                distance = float(np.linalg.norm(ref[a, :2] - ref[b, :2]))
                radius = max(radius, share * distance)
                cap = distance if a == L_SHOULDER else cap
        on_row = np.rint(self.pixels[:, 1]) == np.rint(centre[1])
        if arms is not None:
            on_row &= ~arms
        row = np.sort(self.pixels[on_row, 0])
        if len(row):
            gaps = np.flatnonzero(np.diff(row) > 2.0)
            starts, stops = np.r_[row[0], row[gaps + 1]], np.r_[row[gaps], row[-1]]
            run = np.flatnonzero((starts <= centre[0] + 1) & (stops >= centre[0] - 1))
            if len(run):
                half = max(centre[0] - starts[run[0]], stops[run[0]] - centre[0])
                radius = max(radius, min(float(half), cap))
        return (centre, radius) if radius > 0 else None

    def _claim_head(self, distances: np.ndarray) -> None:
        """Pixels of the head disc (face and hair) belong to the head, unless they surely lie on an arm
        (``_arm_pixels``): a hand raised beside the face then carries itself, never locks of hair."""
        head = _INDEX["head"]
        if head not in self.ref_segments:
            return
        arms = self._arm_pixels(distances)
        disc = self.head_disc(arms["l"] | arms["r"])
        if disc is None:
            return
        centre, radius = disc
        self._head_radius = radius
        distance = np.linalg.norm(self.pixels - centre, axis=1)
        inside = distance <= radius
        # Hair that flares out beyond the disc (a bob, drawn hair) above the neck: the head's too, except
        # what surely lies on an arm (the upper arm within 0.2 of its length as well), so a hand raised
        # beside the face never drags locks of hair along as ribbons.
        neck, nose = self.ref_segments[head]
        hair = (distance <= HAIR_REACH * radius) & ((self.pixels - neck) @ (nose - neck) > 0)
        hair &= _point(self.reference, NECK, self.threshold) is not None  # the root is the neck
        hair &= ~(arms["l"] | arms["r"])
        for side in ("l", "r"):
            upper = _INDEX[f"{side}_upper_arm"]
            if upper in self.ref_segments:
                length = float(np.linalg.norm(np.subtract(*self.ref_segments[upper])))
                hair &= distances[:, upper] > 0.2 * length
        inside |= hair
        if self._shoulder_band:  # the chest below a head-and-shoulders face stays with the shoulders
            inside &= distances[:, 0] > 0
            below = _below_jaw(self.reference, self.pixels, self.threshold)
            if below is not None:
                inside &= ~below
        for side, keep in arms.items():
            for limb in (f"{side}_hand", f"{side}_forearm", f"{side}_upper_arm"):
                distances[inside & ~keep, _INDEX[limb]] = np.inf
        distances[inside, head] = 0.0
        self._head_pixels = inside

    def _soften_neck(self, radius: float) -> None:
        """Head-and-shoulders (no hips): the head's weight fades over ``radius`` px outside the claimed
        head, so the neck and collar stretch between head and shoulders instead of tearing open."""
        head = self._head_pixels
        if head is None or not head.any() or head.all():
            return
        xy = np.rint(self.pixels).astype(np.int64)
        lo = xy.min(0)
        xy -= lo
        grid = np.ones((int(xy[:, 1].max()) + 1, int(xy[:, 0].max()) + 1), np.uint8)
        grid[xy[head, 1], xy[head, 0]] = 0
        distance = cv2.distanceTransform(grid, cv2.DIST_L2, 5)[xy[:, 1], xy[:, 0]]
        fade = np.clip(1.0 - distance / max(radius, 1.0), 0.0, 1.0).astype(np.float32)
        index = _INDEX["head"]
        own = self.weights[:, index].copy()
        extra = np.maximum(fade - own, 0.0)
        rest = 1.0 - own
        scale = np.where(rest > 1e-6, (rest - extra) / np.maximum(rest, 1e-6), 1.0)
        self.weights *= scale[:, None]
        self.weights[:, index] = own + extra * (rest > 1e-6)

    def torso_quad(self) -> np.ndarray | None:
        """The reference torso (shoulders and hips) as a (4, 2) polygon, or None when not seen."""
        torso = self._torso_points(self.reference)
        return None if torso is None else torso[[0, 1, 3, 2]]

    def _torso_points(self, keypoints: np.ndarray) -> np.ndarray | None:
        pts = keypoints[list(TORSO_POINTS)]
        return pts[:, :2].astype(np.float64) if (pts[:, 2] >= self.threshold).all() else None

    def bone_matrices(self, target_keypoints: np.ndarray) -> np.ndarray:
        """(B, 2, 3) affine map of each bone from the reference to this frame (unseen bones: the parent's)."""
        target = np.asarray(target_keypoints, np.float32)
        mats: list[np.ndarray | None] = [None] * len(BONES)
        ref_torso, tgt_torso = self._torso_points(self.reference), self._torso_points(target)
        shoulders = [
            i for i in (L_SHOULDER, R_SHOULDER) if min(self.reference[i, 2], target[i, 2]) >= self.threshold
        ]
        if ref_torso is not None and tgt_torso is not None:
            mats[0] = _affine(ref_torso, tgt_torso)
        elif len(shoulders) == 2:  # no hips: the shoulders carry the torso (not the turning head)
            mats[0] = similarity(
                self.reference[shoulders, :2].astype(np.float64),
                target[shoulders, :2].astype(np.float64),
                HEAD_SCALE,
            )
        elif shoulders:
            shift = target[shoulders[0], :2].astype(np.float64) - self.reference[shoulders[0], :2]
            mats[0] = np.hstack([np.eye(2), shift[:, None]])
        else:
            mats[0] = np.hstack([np.eye(2), self._mean_shift(target)[:, None]])
        head = _INDEX["head"]
        face = FACE_POINTS[
            (self.reference[FACE_POINTS, 2] >= self.threshold) & (target[FACE_POINTS, 2] >= self.threshold)
        ]
        if head in self.ref_segments and len(face) >= 3:
            mats[head] = similarity(
                self.reference[face, :2].astype(np.float64), target[face, :2].astype(np.float64), HEAD_SCALE
            )
        for i, bone in enumerate(BONES):
            if i == 0 or i not in self.ref_segments or mats[i] is not None:
                continue
            a1 = (
                _head_root(target, self.threshold)
                if bone.name == "head"
                else _point(target, bone.start, self.threshold)
            )
            b1 = _point(target, bone.end, self.threshold)
            if a1 is None or b1 is None:
                continue
            a0, b0 = self.ref_segments[i]
            axis0 = b0 - a0
            length0 = float(np.linalg.norm(axis0))
            unit0 = axis0 / length0
            normal0 = np.array([-unit0[1], unit0[0]])
            axis1 = b1.astype(np.float64) - a1
            length1 = max(float(np.linalg.norm(axis1)), 1e-6)
            unit1 = axis1 / length1
            normal1 = np.array([-unit1[1], unit1[0]])
            if bone.name == "head":  # a head turns and scales as a whole; it does not stretch
                scale = float(np.clip(length1 / length0, *HEAD_SCALE))
                along_to, across_to = unit1 * scale, normal1 * scale
            else:
                along_to, across_to = axis1 / length0, normal1
            # p -> a1 + ((p - a0).u0) * along_to + ((p - a0).n0) * across_to, as one 2x3 matrix
            linear = np.outer(along_to, unit0) + np.outer(across_to, normal0)
            mats[i] = np.hstack([linear, (a1 - linear @ a0)[:, None]])
        # Bones not seen in this frame move with their parent.
        for i, bone in enumerate(BONES):
            parent = bone.parent
            while mats[i] is None and parent is not None:
                mats[i] = mats[_INDEX[parent]]
                parent = BONES[_INDEX[parent]].parent
            if mats[i] is None:
                mats[i] = mats[0]
        return np.stack(mats)

    def _mean_shift(self, target: np.ndarray) -> np.ndarray:
        both = (self.reference[:17, 2] >= self.threshold) & (target[:17, 2] >= self.threshold)
        if not both.any():
            return np.zeros(2)
        return (target[:17][both, :2] - self.reference[:17][both, :2]).mean(0)

    def pixel_matrices(self, target_keypoints: np.ndarray) -> np.ndarray:
        """(N, 2, 3) per-pixel blended affine maps (linear blend skinning)."""
        mats = self.bone_matrices(target_keypoints).reshape(len(BONES), 6).astype(np.float32)
        return (self.weights @ mats).reshape(-1, 2, 3)

    def positions(self, target_keypoints: np.ndarray, matrices: np.ndarray | None = None) -> np.ndarray:
        """(N, 2) target positions of the bound reference pixels for one frame's keypoints."""
        m = self.pixel_matrices(target_keypoints) if matrices is None else matrices
        x, y = self.pixels[:, 0], self.pixels[:, 1]
        return np.stack(
            [m[:, 0, 0] * x + m[:, 0, 1] * y + m[:, 0, 2], m[:, 1, 0] * x + m[:, 1, 1] * y + m[:, 1, 2]], 1
        )


def _inside_polygon(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Even-odd rule for a small polygon."""
    x, y = points[:, 0], points[:, 1]
    inside = np.zeros(len(points), bool)
    n = len(corners)
    for i in range(n):
        (x0, y0), (x1, y1) = corners[i], corners[(i + 1) % n]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_cross)
    return inside


def skeleton_dense_flow(
    reference_keypoints: np.ndarray, keypoints: np.ndarray, reference_mask: np.ndarray
) -> np.ndarray:
    """``(T, H, W, 2)`` reference -> frame t displacement of the reference person's pixels
    (``reference_mask`` > 127) under the 2D skeleton field, zero elsewhere: the dense field when neither CMP
    nor a body fit gives one. ``keypoints``: (T, 133, 3) in the mask's pixels."""
    height, width = reference_mask.shape
    flow = np.zeros((len(keypoints), height, width, 2), np.float32)
    ys, xs = np.nonzero(reference_mask > 127)
    if len(xs) == 0:
        return flow
    pixels = np.stack([xs, ys], 1).astype(np.float64)
    try:
        field = SkeletonField(reference_keypoints, pixels)
    except ValueError:  # no usable bones in the reference: no motion to propagate
        return flow
    for t, frame_keypoints in enumerate(keypoints):
        flow[t, ys, xs] = (field.positions(frame_keypoints) - pixels).astype(np.float32)
    return flow
