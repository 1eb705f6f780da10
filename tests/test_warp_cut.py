"""The warp engine's 2D path on a picture cut at the thighs: leg bones the picture does not show.

A drawn figure in an A-line dress, cut at the thighs, whose knees the pose estimator guessed at the
picture's bottom edge, spread along the dress's sides. The driving thighs hang straight down; nothing
else moves. The dress must stay as drawn (the hips did not move), never have its sides swung down like
legs, and the figure must stay one connected body.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from animate.engines.warp import CUT_EDGE, WarpEngine, cut_legs
from animate.motion.bundle import GuidanceBundle
from animate.pose.layout import (
    L_ANKLE,
    L_EAR,
    L_ELBOW,
    L_EYE,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    NOSE,
    R_ANKLE,
    R_EAR,
    R_ELBOW,
    R_EYE,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
)

WIDTH, HEIGHT = 160, 200
BACKGROUND, SKIN, TOP, DRESS = (20, 20, 60), (230, 190, 160), (40, 60, 200), (200, 40, 60)
POINTS = {
    NOSE: (80, 42), L_EYE: (86, 36), R_EYE: (74, 36), L_EAR: (94, 40), R_EAR: (66, 40),
    L_SHOULDER: (98, 62), R_SHOULDER: (62, 62), L_ELBOW: (104, 92), R_ELBOW: (56, 92),
    L_WRIST: (106, 112), R_WRIST: (54, 112), L_HIP: (92, 120), R_HIP: (68, 120),
    L_KNEE: (118, 197), R_KNEE: (42, 197),  # guessed from the dress's sides at the bottom edge
}  # fmt: skip


def keypoints(moves: dict[int, tuple[float, float]] | None = None) -> np.ndarray:
    kp = np.zeros((133, 3), np.float32)
    for index, xy in {**POINTS, **(moves or {})}.items():
        kp[index] = (*xy, 1.0)
    kp[[L_KNEE, R_KNEE], 2] = 0.7
    return kp


def test_cut_legs_names_the_leg_bones_whose_end_the_picture_does_not_show():
    cut = np.zeros((HEIGHT, WIDTH), bool)
    cut[60:, 40:120] = True  # the person goes on past the bottom edge (half its width)
    kp = keypoints()
    assert set(cut_legs(kp, cut)) == {"l_thigh", "r_thigh"}  # knees at 197 of 200 (>= 0.97 * 200 = 194)
    kp[L_KNEE, 1] = CUT_EDGE * HEIGHT - 1  # just above the edge band: shown
    assert cut_legs(kp, cut) == ("r_thigh",)
    kp[R_KNEE, 2] = 0.2  # not seen: no bone to cut
    assert cut_legs(kp, cut) == ()
    # Knees in view, ankles below the picture (cut at the shins): the shins are cut, not the thighs.
    kp = keypoints({L_KNEE: (92, 160), R_KNEE: (68, 160), L_ANKLE: (92, 230), R_ANKLE: (68, 230)})
    kp[[L_ANKLE, R_ANKLE], 2] = 0.5
    assert set(cut_legs(kp, cut)) == {"l_shin", "r_shin"}
    # A full figure (ankles well inside): nothing is cut.
    full = keypoints({L_KNEE: (92, 130), R_KNEE: (68, 130), L_ANKLE: (92, 170), R_ANKLE: (68, 170)})
    full[[L_ANKLE, R_ANKLE], 2] = 0.9
    assert cut_legs(full, cut) == ()
    # Feet standing just above the bottom edge, the person not cut by it (its bottom row 4% person): the
    # ankles are shown however low they lie.
    standing = np.zeros((HEIGHT, WIDTH), bool)
    standing[60 : HEIGHT - 1, 40:120] = True
    standing[HEIGHT - 1, 60:66] = True  # 6 px of 160: under 5%
    assert cut_legs(kp, standing) == ()
    standing[HEIGHT - 1, 60:68] = True  # 8 px: 5%, cut
    assert set(cut_legs(kp, standing)) == {"l_shin", "r_shin"}


@pytest.fixture(scope="module")
def dressed() -> tuple[GuidanceBundle, list[np.ndarray], list[np.ndarray], np.ndarray]:
    image = np.full((HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
    person = np.zeros((HEIGHT, WIDTH), np.uint8)
    dress = np.array([[66, 118], [94, 118], [132, HEIGHT - 1], [28, HEIGHT - 1]], np.int32)
    cv2.fillConvexPoly(image, dress, DRESS)
    cv2.fillConvexPoly(person, dress, 1)
    cv2.rectangle(image, (62, 58), (98, 120), TOP, -1)
    cv2.rectangle(person, (62, 58), (98, 120), 1, -1)
    cv2.circle(image, (80, 40), 16, SKIN, -1)
    cv2.circle(person, (80, 40), 16, 1, -1)
    cv2.rectangle(image, (75, 50), (85, 60), SKIN, -1)  # neck
    cv2.rectangle(person, (75, 50), (85, 60), 1, -1)
    for a, b, c in ((L_SHOULDER, L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW, R_WRIST)):
        for u, v in ((a, b), (b, c)):
            cv2.line(image, POINTS[u], POINTS[v], SKIN, 7)
            cv2.line(person, POINTS[u], POINTS[v], 1, 7)
    reference = keypoints()
    # Driving: the thighs hang straight down from the hips (same length), nothing else moves.
    frames_kp = []
    for share in (0.5, 1.0):
        moves = {}
        for hip, knee in ((L_HIP, L_KNEE), (R_HIP, R_KNEE)):
            length = float(np.linalg.norm(np.subtract(POINTS[knee], POINTS[hip])))
            straight = np.array([POINTS[hip][0], POINTS[hip][1] + length])
            moves[knee] = tuple((1 - share) * np.array(POINTS[knee], float) + share * straight)
        frames_kp.append(keypoints(moves))
    bundle = GuidanceBundle(
        reference=image,
        reference_mask=person * 255,
        reference_keypoints=reference,
        keypoints=np.stack(frames_kp),
        fps=24.0,
        size=(WIDTH, HEIGHT),
    )
    engine = WarpEngine()
    frames, silhouettes = [], []
    for frame in engine.render(bundle):
        frames.append(frame)
        silhouettes.append(engine.last_silhouette.copy())
    assert engine.motion == "skeleton"
    return bundle, frames, silhouettes, cv2.fillConvexPoly(np.zeros((HEIGHT, WIDTH), np.uint8), dress, 1) > 0


def test_a_dress_cut_at_the_thighs_stays_as_drawn_when_the_thighs_straighten(dressed):
    bundle, frames, _, dress = dressed
    # The dress away from its outline (the soft edge) and from the arms hanging over its top.
    inner = cv2.erode(dress.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    inner[:130] = False
    assert inner.sum() > 3000
    for frame in frames:
        error = np.abs(frame[inner].astype(int) - bundle.reference[inner].astype(int)).max(1)
        assert np.mean(error > 30) < 0.01, np.mean(error > 30)
        # Nor does dress colour appear outside the drawn dress (its sides swung down and in).
        outside = ~cv2.dilate(dress.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        red = np.abs(frame.astype(int) - np.array(DRESS)).sum(-1) < 60
        assert (red & outside).sum() < 20


def test_a_figure_cut_at_the_thighs_stays_one_body(dressed):
    _, _, silhouettes, _ = dressed
    for silhouette in silhouettes:
        _, _, stats, _ = cv2.connectedComponentsWithStats(silhouette.astype(np.uint8))
        assert stats[1:, cv2.CC_STAT_AREA].max() >= 0.995 * silhouette.sum()
