"""2D skeleton field: hair that flares out beside the face stays with the head when a hand raised
beside it moves away (a drawn bob with both hands up was carried off as ribbons), while an arm raised
beside the head still carries its own pixels.

Hand-made scene: a face (nose, eyes, ears) with a narrow crown of hair at the eyes' row that flares out
below them, shoulders and hips, and a hand held up beside each flare. Expectations are geometric: what
lies on a bone that did not move stays put; the midpoint of a moved upper arm lands on the midpoint of
its target bone.
"""

from __future__ import annotations

import cv2
import numpy as np

from animate.motion.skeleton_field import HAIR_REACH, SkeletonField
from animate.pose.layout import (
    L_EAR,
    L_ELBOW,
    L_EYE,
    L_HIP,
    L_SHOULDER,
    L_WRIST,
    LEFT_HAND_ROOT,
    NOSE,
    R_EAR,
    R_ELBOW,
    R_EYE,
    R_HIP,
    R_SHOULDER,
    R_WRIST,
    RIGHT_HAND_ROOT,
)

SIZE = (220, 260)  # (W, H)
CENTRE = np.array([110.0, 58.0])  # mean of the face's keypoints


def hand_points(wrist: tuple[float, float], up: float) -> np.ndarray:
    """21 hand keypoints: a palm 16 px tall above the wrist, fingers 14 px further up, 5 px apart."""
    x, y = wrist
    points = [(x, y)]
    for k, dx in enumerate((-8.0, -4.0, 0.0, 4.0, 8.0)):  # thumb, index, middle, ring, pinky
        base = (x + dx, y - (10.0 if k == 0 else 16.0) * up)
        points += [(base[0], base[1] - j * 4.7 * up) for j in range(4)]
    return np.array(points, np.float64)


def keypoints(arms: str = "beside") -> np.ndarray:
    kp = np.zeros((133, 3), np.float32)
    fixed = {
        NOSE: (110, 62), L_EYE: (118, 54), R_EYE: (102, 54), L_EAR: (125, 60), R_EAR: (95, 60),
        L_SHOULDER: (140, 120), R_SHOULDER: (80, 120), L_HIP: (132, 220), R_HIP: (88, 220),
    }  # fmt: skip
    if arms == "beside":  # forearms up, hands held beside the flaring hair
        fixed |= {L_ELBOW: (170, 124), L_WRIST: (146, 86), R_ELBOW: (50, 124), R_WRIST: (74, 86)}
    else:  # upper arms straight up beside the head, forearms bent outward
        fixed |= {L_ELBOW: (136, 40), L_WRIST: (170, 18), R_ELBOW: (84, 40), R_WRIST: (50, 18)}
    for index, xy in fixed.items():
        kp[index] = (*xy, 1.0)
    for root, wrist in ((LEFT_HAND_ROOT, L_WRIST), (RIGHT_HAND_ROOT, R_WRIST)):
        kp[root : root + 21, :2] = hand_points(tuple(kp[wrist, :2]), 1.0)
        kp[root : root + 21, 2] = 1.0
    return kp


def swing(kp: np.ndarray, angle: float) -> np.ndarray:
    """Each arm (elbow, wrist, hand) turned about its shoulder, away from the head."""
    out = kp.copy()
    for shoulder, elbow, wrist, root, sign in (
        (L_SHOULDER, L_ELBOW, L_WRIST, LEFT_HAND_ROOT, 1.0),
        (R_SHOULDER, R_ELBOW, R_WRIST, RIGHT_HAND_ROOT, -1.0),
    ):
        c, s = np.cos(sign * angle), np.sin(sign * angle)
        rows = [elbow, wrist, *range(root, root + 21)]
        d = out[rows, :2] - out[shoulder, :2]
        out[rows, :2] = out[shoulder, :2] + np.stack(
            [c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]], 1
        )
    return out


def scene(kp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) bool person and (H, W) bool flare (hair beyond the crown, below the eyes)."""
    width, height = SIZE
    person = np.zeros((height, width), np.uint8)
    cv2.circle(person, (110, 58), 20, 1, -1)  # head with its crown of hair: 20 px at the eyes' row
    flare = np.zeros_like(person)
    cv2.ellipse(flare, (110, 70), (28, 10), 0, 0, 360, 1, -1)  # the bob flares out below the eyes
    flare &= 1 - cv2.circle(np.zeros_like(person), (110, 58), 20, 1, -1)
    person |= flare
    cv2.rectangle(person, (80, 80), (140, 230), 1, -1)  # neck, torso
    for shoulder, elbow, wrist, root in (
        (L_SHOULDER, L_ELBOW, L_WRIST, LEFT_HAND_ROOT),
        (R_SHOULDER, R_ELBOW, R_WRIST, RIGHT_HAND_ROOT),
    ):
        a, b, c = (tuple(np.rint(kp[i, :2]).astype(int)) for i in (shoulder, elbow, wrist))
        cv2.line(person, a, b, 1, 8)
        cv2.line(person, b, c, 1, 10)
        cv2.fillConvexPoly(person, cv2.convexHull(np.rint(kp[root : root + 21, :2]).astype(np.int32)), 1)
    return person > 0, flare > 0


def field_of(kp: np.ndarray) -> tuple[SkeletonField, np.ndarray, np.ndarray]:
    person, flare = scene(kp)
    ys, xs = np.nonzero(person)
    pixels = np.stack([xs, ys], 1).astype(np.float64)
    return SkeletonField(kp, pixels), pixels, flare[ys, xs]


def test_the_scene_puts_the_flare_beyond_the_head_disc_and_next_to_the_hands():
    kp = keypoints()
    field, pixels, on_flare = field_of(kp)
    centre, radius = field.head_disc()
    np.testing.assert_allclose(centre, CENTRE, atol=0.5)
    distance = np.linalg.norm(pixels - centre, axis=1)
    # The flare lies (partly) outside the disc but within its hair reach; the hands lie beside it.
    assert (on_flare & (distance > radius + 2) & (distance <= HAIR_REACH * radius)).sum() > 150
    for root in (LEFT_HAND_ROOT, RIGHT_HAND_ROOT):
        gap = np.min(np.linalg.norm(pixels[on_flare][:, None] - kp[root : root + 21, :2][None], axis=2))
        assert gap < 12


def test_flaring_hair_stays_when_the_hands_beside_it_move_away():
    kp = keypoints()
    field, pixels, on_flare = field_of(kp)
    # The hands "surely" own their hull grown by a quarter palm (16 px): leave those out.
    hands, inside_hands = np.zeros(len(pixels), bool), np.zeros(len(pixels), bool)
    for root in (LEFT_HAND_ROOT, RIGHT_HAND_ROOT):
        hull = cv2.convexHull(kp[root : root + 21, :2].astype(np.float32))
        signed = np.array([cv2.pointPolygonTest(hull, (float(x), float(y)), True) for x, y in pixels])
        hands |= signed >= -5
        inside_hands |= signed >= 0
    hair = on_flare & ~hands
    assert hair.sum() > 300
    for angle in (0.5, 1.0):
        moved = field.positions(swing(kp, angle))
        # Head and torso did not move: neither does the hair (no ribbon pulled toward a hand).
        shift = np.linalg.norm(moved[hair] - pixels[hair], axis=1)
        assert shift.max() < 0.5, (angle, shift.max(), np.mean(shift > 0.5))
        # The hands themselves did move with their arm, also where they lie within the hair's reach.
        target = swing(kp, angle)
        for root in (LEFT_HAND_ROOT, RIGHT_HAND_ROOT):
            middle = root + 9
            at = np.argmin(np.linalg.norm(pixels - kp[middle, :2], axis=1))
            assert np.linalg.norm(moved[at] - target[middle, :2]) < 2.0
        near = inside_hands & (np.linalg.norm(pixels - CENTRE, axis=1) <= HAIR_REACH * field.head_disc()[1])
        assert near.sum() > 20
        assert np.linalg.norm(moved[near] - pixels[near], axis=1).min() > 5.0


def test_an_upper_arm_raised_beside_the_head_still_moves_with_its_bone():
    kp = keypoints("raised")
    field, pixels, _ = field_of(kp)
    centre, radius = field.head_disc()
    target = swing(kp, 0.6)
    moved = field.positions(target)
    for shoulder, elbow in ((L_SHOULDER, L_ELBOW), (R_SHOULDER, R_ELBOW)):
        # A point on the upper arm beside the head, within the hair's reach of the head's centre.
        point = kp[shoulder, :2] + 0.75 * (kp[elbow, :2] - kp[shoulder, :2])
        assert np.linalg.norm(point - centre) <= HAIR_REACH * radius
        at = np.argmin(np.linalg.norm(pixels - point, axis=1))
        expected = target[shoulder, :2] + 0.75 * (target[elbow, :2] - target[shoulder, :2])
        assert np.linalg.norm(moved[at] - expected) < 2.0, (moved[at], expected)


def test_the_hair_reach_ends_at_the_neck():
    """Big-headed proportions (shoulders just below the chin): the chest within the hair's reach of the
    head's centre stays with the torso when the head tilts; only the head turns."""
    kp = keypoints()
    kp[[L_SHOULDER, R_SHOULDER], 1] = 80.0
    person, _ = scene(kp)
    ys, xs = np.nonzero(person)
    pixels = np.stack([xs, ys], 1).astype(np.float64)
    field = SkeletonField(kp, pixels)
    centre, radius = field.head_disc()
    tilted = kp.copy()
    neck = kp[[L_SHOULDER, R_SHOULDER], :2].mean(0)
    c, s = np.cos(0.4), np.sin(0.4)
    for index in (NOSE, L_EYE, R_EYE, L_EAR, R_EAR):
        d = kp[index, :2] - neck
        tilted[index, :2] = neck + np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]])
    moved = field.positions(tilted)
    # Chest pixels 6+ px below the shoulder line, within the hair's reach of the head's centre.
    chest = (pixels[:, 1] >= neck[1] + 6) & (np.linalg.norm(pixels - centre, axis=1) <= HAIR_REACH * radius)
    assert chest.sum() > 20
    # What the head's similarity would do to them (rotation about the neck by 0.4 rad): far more.
    d = pixels[chest] - neck
    with_head = neck + np.stack([c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]], 1)
    shift = np.linalg.norm(moved[chest] - pixels[chest], axis=1)
    assert np.all(shift < 0.5 * np.linalg.norm(with_head - pixels[chest], axis=1)), shift.max()
