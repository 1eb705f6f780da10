"""The warp engine's faces, hands and background, measured on pictures drawn here.

Head-and-shoulders (the 2D path without hips): a drawn head with coloured markers on its eyes above a
suit; tilting the face keypoints by k degrees must tilt the line between the eye markers by k degrees,
leave the chest where the shoulders put it and keep the person in one piece. The background outside
the person must not move between frames, and no pixel of the drawn person may show the reference's
background (a halo carried along the moved limbs). Body path: a fitted hand a little off the real one
must still be drawn in the hand's colour, never the sleeve's or the background's.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from animate.engines.warp import WarpEngine, hand_regions
from animate.motion.bundle import GuidanceBundle
from animate.pose.layout import (
    FACE,
    L_EAR,
    L_ELBOW,
    L_EYE,
    L_SHOULDER,
    L_WRIST,
    LEFT_HAND_ROOT,
    NOSE,
    R_EAR,
    R_EYE,
    R_SHOULDER,
    RIGHT_HAND_ROOT,
)

WIDTH, HEIGHT = 200, 240
BACKGROUND = (0, 230, 0)
SKIN, SUIT, HAIR = (225, 180, 150), (40, 40, 90), (60, 30, 20)
RED, BLUE, YELLOW = (255, 0, 0), (0, 0, 255), (255, 255, 0)
CENTRE = np.array([100.0, 85.0])  # the face's centre: the tilts turn about it
HEAD_RADIUS = 38


def marker_centre(frame: np.ndarray, colour: tuple[int, int, int], tolerance: int = 60) -> np.ndarray:
    """Centroid (x, y) of the pixels within ``tolerance`` (sum of |difference|) of a marker colour."""
    near = np.abs(frame.astype(int) - np.array(colour)).sum(-1) < tolerance
    ys, xs = np.nonzero(near)
    assert len(xs) >= 4, f"marker {colour} not found"
    return np.array([xs.mean(), ys.mean()])


def turn(points: np.ndarray, degrees: float, centre: np.ndarray = CENTRE) -> np.ndarray:
    """Points turned by ``degrees`` about ``centre`` (positive: clockwise on screen, y down)."""
    angle = np.radians(degrees)
    c, s = np.cos(angle), np.sin(angle)
    d = points - centre
    return centre + np.stack([c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]], 1)


@pytest.fixture(scope="module")
def head_and_shoulders() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference image, person mask uint8, (133, 3) keypoints): a head with eye markers above a suit
    cut at the picture's bottom (shoulders, no hips), the jaw's 17 points along the head's lower half."""
    image = np.full((HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
    person = np.zeros((HEIGHT, WIDTH), np.uint8)
    for target, value in ((image, SUIT), (person, 255)):
        cv2.ellipse(target, (100, 240), (85, 90), 0, 180, 360, value, -1)  # shoulders and chest
        cv2.rectangle(target, (86, 110), (114, 160), value, -1)  # neck
    cv2.rectangle(image, (86, 110), (114, 150), SKIN, -1)
    for target, value in ((image, SKIN), (person, 255)):
        cv2.circle(target, (100, 85), HEAD_RADIUS, value, -1)
    cv2.ellipse(image, (100, 85), (HEAD_RADIUS, HEAD_RADIUS), 0, 180, 360, HAIR, -1)
    cv2.rectangle(image, (62, 70), (138, 85), SKIN, -1)  # forehead below the hair
    cv2.circle(image, (86, 80), 3, RED, -1)  # the left eye as drawn on screen (the person's right)
    cv2.circle(image, (114, 80), 3, BLUE, -1)
    cv2.circle(image, (100, 205), 3, YELLOW, -1)  # a badge on the chest
    keypoints = np.zeros((133, 3), np.float32)
    points = {
        NOSE: (100, 92),
        R_EYE: (86, 80),
        L_EYE: (114, 80),
        R_EAR: (62, 86),
        L_EAR: (138, 86),
        R_SHOULDER: (40, 175),
        L_SHOULDER: (160, 175),
    }
    for index, xy in points.items():
        keypoints[index] = (*xy, 1.0)
    jaw = np.radians(np.linspace(180, 0, 17))  # along the lower half of the head, chin at 90 degrees
    keypoints[FACE.start : FACE.start + 17, 0] = 100 + 0.95 * HEAD_RADIUS * np.cos(jaw)
    keypoints[FACE.start : FACE.start + 17, 1] = 85 + 0.95 * HEAD_RADIUS * np.sin(jaw)
    keypoints[FACE.start : FACE.start + 17, 2] = 1.0
    return image, person, keypoints


def tilted(keypoints: np.ndarray, degrees: float) -> np.ndarray:
    out = keypoints.copy()
    face = np.r_[[NOSE, L_EYE, R_EYE, L_EAR, R_EAR], np.arange(FACE.start, FACE.start + 17)]
    out[face, :2] = turn(keypoints[face, :2].astype(np.float64), degrees)
    return out


def render(image, person, reference_keypoints, frames) -> tuple[list[np.ndarray], list[np.ndarray]]:
    bundle = GuidanceBundle(
        reference=image,
        reference_mask=person,
        reference_keypoints=reference_keypoints,
        keypoints=np.stack(frames).astype(np.float32),
        fps=24.0,
        size=(image.shape[1], image.shape[0]),
    )
    engine = WarpEngine()
    outputs, silhouettes = [], []
    for frame in engine.render(bundle):
        outputs.append(frame)
        silhouettes.append(engine.last_silhouette.copy())
    assert engine.motion == "skeleton"
    return outputs, silhouettes


@pytest.fixture(scope="module")
def tilts(head_and_shoulders):
    image, person, keypoints = head_and_shoulders
    degrees = (0.0, 15.0, -12.0, 25.0)
    frames, silhouettes = render(image, person, keypoints, [tilted(keypoints, d) for d in degrees])
    return degrees, frames, silhouettes


def eye_line_degrees(frame: np.ndarray) -> float:
    left, right = marker_centre(frame, RED), marker_centre(frame, BLUE)
    return float(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0])))


def test_a_tilted_face_tilts_the_eye_line_by_the_same_angle(tilts):
    degrees, frames, _ = tilts
    for k, frame in zip(degrees, frames, strict=True):
        assert eye_line_degrees(frame) == pytest.approx(k, abs=2.0)
        # The eyes stay as far apart as in the reference (28 px): turned, not squashed.
        distance = np.linalg.norm(marker_centre(frame, BLUE) - marker_centre(frame, RED))
        assert distance == pytest.approx(28.0, abs=2.0)
        # And they sit where the turn about the face's centre puts them.
        expected = turn(np.array([[86.0, 80.0]]), k)[0]
        assert np.linalg.norm(marker_centre(frame, RED) - expected) < 2.0


def test_the_chest_stays_with_the_shoulders_and_the_person_in_one_piece(tilts):
    _, frames, silhouettes = tilts
    for frame, silhouette in zip(frames, silhouettes, strict=True):
        assert np.linalg.norm(marker_centre(frame, YELLOW) - (100, 205)) < 1.5
        stats = cv2.connectedComponentsWithStats(silhouette.astype(np.uint8))[2]
        assert stats[1:, cv2.CC_STAT_AREA].max() >= 0.995 * silhouette.sum()
        # No hole opens inside the person (a torn neck shows the background through it).
        holes = cv2.connectedComponentsWithStats((~silhouette).astype(np.uint8))[2]
        assert (holes[1:, cv2.CC_STAT_AREA] >= 10).sum() == 1, sorted(holes[1:, cv2.CC_STAT_AREA])


def test_a_lifted_head_stretches_the_neck_instead_of_tearing_it(head_and_shoulders):
    """The face keypoints lifted by 16 px (the chin up), the shoulders still: the neck stretches, as wide as
    drawn (28 px) on every row from the lifted chin to the chest; no notch or gap opens under the chin."""
    image, person, keypoints = head_and_shoulders
    lifted = keypoints.copy()
    face = np.r_[[NOSE, L_EYE, R_EYE, L_EAR, R_EAR], np.arange(FACE.start, FACE.start + 17)]
    lifted[face, 1] -= 16.0
    frames, silhouettes = render(image, person, keypoints, [lifted])
    chin = round(85 + 0.95 * HEAD_RADIUS - 16)
    assert silhouettes[0][chin:150, 87:114].all()
    green = np.abs(frames[0][chin:150, 88:113].astype(int) - BACKGROUND).sum(-1) < 150
    assert not green.any()


def test_the_background_stays_still_outside_the_person(tilts, head_and_shoulders):
    image, person, _ = head_and_shoulders
    _, frames, silhouettes = tilts
    drawn = np.any(silhouettes, axis=0) | (person > 0)
    outside = ~(cv2.dilate(drawn.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0)
    assert outside.sum() > 0.3 * outside.size
    for frame in frames[1:]:
        np.testing.assert_array_equal(frame[outside], frames[0][outside])
    # Far from where the reference person stood, it is the reference itself.
    far = ~(cv2.dilate(person, np.ones((41, 41), np.uint8)) > 0) & outside
    np.testing.assert_array_equal(frames[0][far], image[far])


def test_no_background_rides_along_a_moved_arm():
    """A drawn arm raised from hanging to horizontal: the pixels drawn as the person (silhouette) show the
    person's colours; none shows the reference's background colour (the old rim sampled it: a halo)."""
    image = np.full((HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
    person = np.zeros((HEIGHT, WIDTH), np.uint8)
    for target, value in ((image, SUIT), (person, 255)):
        cv2.rectangle(target, (80, 60), (120, 200), value, -1)  # torso
        cv2.circle(target, (100, 40), 18, value, -1)  # head
        cv2.line(target, (120, 66), (134, 120), value, 11)  # the left arm hanging
    cv2.circle(image, (100, 40), 18, SKIN, -1)
    keypoints = np.zeros((133, 3), np.float32)
    points = {
        NOSE: (100, 44),
        R_EYE: (94, 36),
        L_EYE: (106, 36),
        R_SHOULDER: (82, 66),
        L_SHOULDER: (118, 66),
        L_ELBOW: (126, 93),
        L_WRIST: (134, 120),
        11: (88, 190),
        12: (112, 190),
    }
    for index, xy in points.items():
        keypoints[index] = (*xy, 1.0)
    raised = keypoints.copy()
    raised[L_ELBOW, :2], raised[L_WRIST, :2] = (146, 66), (174, 66)
    frames, silhouettes = render(image, person, keypoints, [keypoints, raised])
    for frame, silhouette in zip(frames, silhouettes, strict=True):
        core = cv2.erode(silhouette.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        green = np.abs(frame[core].astype(int) - BACKGROUND).sum(1) < 150
        assert green.sum() == 0, green.sum()
    # The raised arm is drawn where the keypoints put it.
    assert silhouettes[1][66, 140:170].all()


def test_hand_regions_by_hand():
    """The hull of a hand's seen keypoints grown by 0.15 of the palm (wrist to middle knuckle), inside the
    person; a hand with fewer than 3 seen keypoints has none."""
    person = np.ones((100, 100), bool)
    person[:, 47:] = False
    keypoints = np.zeros((133, 3), np.float32)
    hand = keypoints[LEFT_HAND_ROOT : LEFT_HAND_ROOT + 21]
    hand[:, 2] = 1.0
    hand[:, :2] = (40, 40)
    hand[0, :2], hand[9, :2], hand[4, :2], hand[20, :2] = (40, 40), (40, 80), (30, 80), (50, 80)
    keypoints[RIGHT_HAND_ROOT : RIGHT_HAND_ROOT + 2] = (80, 10, 1.0)  # two points only: no region
    regions = hand_regions(keypoints, person)
    assert not (regions & 2).any()
    left = (regions & 1) > 0
    # palm 40 px -> grown by 6 px around the triangle (40, 40), (30, 80), (50, 80)
    assert left[86, 40] and not left[87, 40]
    assert left[34, 40] and not left[33, 40]
    assert left[80, 24] and not left[80, 23]
    assert left[80, 46] and not left[80, 47]  # the person ends at x = 47


def test_hands_fitted_off_the_real_ones_take_the_hands_colour():
    """Body path, Champ-coloured reference (arms hanging): the fitted body bends both elbows, so its hands
    lie over the forearms and the background, never over the real hands. With the hands' keypoints on
    the real hands, the fitted hands show their hand's colour; without them (the premise) they show the
    sleeve (forearm, elbow) and whatever lies beside it."""
    pytest.importorskip("torch")
    from test_motion_body_field import synthetic_motion
    from test_warp_body import GREY, interior, palette_part, reference_of

    from animate.body import PART_NAMES, load_anny
    from animate.engines.warp import BodyWarp

    anny = load_anny()
    true = synthetic_motion(anny, {}, [{}])
    image, person = reference_of(true)
    hands = (PART_NAMES.index("left_hand"), PART_NAMES.index("right_hand"))
    keypoints = np.zeros((133, 3), np.float32)
    for part, root in zip(hands, (LEFT_HAND_ROOT, RIGHT_HAND_ROOT), strict=True):
        hy, hx = np.nonzero(true.reference_render.part == part)
        pick = np.linspace(0, len(hx) - 1, 21).astype(int)  # 21 keypoints spread over the real hand
        keypoints[root : root + 21] = np.stack([hx[pick], hy[pick], np.ones(21)], 1)
    bent = {"left_elbow": (0.0, 0.0, -0.8), "right_elbow": (0.0, 0.0, 0.8)}
    fitted = synthetic_motion(anny, bent, [bent])  # the frame shows the fitted reference pose itself
    vertices = fitted.vertices(0, 1)[0]
    target = fitted.renderer()[0].render(vertices, fitted.camera)
    for part in hands:
        drawn = interior(target.part == part, 1)
        assert drawn.sum() > 30 and not (drawn & (true.reference_render.part == part)).any()
        shares = []
        for kp in (None, keypoints):
            frame, _ = BodyWarp(fitted, image, person, scale=1, keypoints=kp).frame(vertices)
            assert (np.abs(frame[drawn].astype(int) - GREY).sum(1) < 12).mean() < 0.02
            shares.append((palette_part(frame[drawn]) == part).mean())
        assert shares[0] < 0.5, shares  # the premise: the misfit paints sleeve where the hands are
        assert shares[1] > 0.95, shares


def test_a_finger_follows_its_own_keypoints():
    """A drawn open hand (palm and five straight fingers, a marker on each fingertip) at the end of an arm;
    the frame turns only the index finger by 40 degrees about its base: its tip marker goes where the turn
    puts it, the other tips stay (2D path)."""
    image = np.full((HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
    person = np.zeros((HEIGHT, WIDTH), np.uint8)
    keypoints = np.zeros((133, 3), np.float32)
    body = {
        NOSE: (40, 30),
        R_EYE: (36, 26),
        L_EYE: (44, 26),
        R_SHOULDER: (30, 60),
        L_SHOULDER: (50, 60),
        11: (32, 130),
        12: (48, 130),
        L_ELBOW: (80, 60),
        L_WRIST: (110, 60),
    }
    for index, xy in body.items():
        keypoints[index] = (*xy, 1.0)
    for target, value in ((image, SUIT), (person, 255)):
        cv2.rectangle(target, (30, 55), (50, 135), value, -1)
        cv2.circle(target, (40, 30), 12, value, -1)
        cv2.line(target, (50, 60), (110, 60), value, 9)
    hand = keypoints[LEFT_HAND_ROOT : LEFT_HAND_ROOT + 21]
    hand[0] = (110, 60, 1.0)
    tips = {}
    for finger, (base, y) in enumerate(((1, 44), (5, 50), (9, 60), (13, 70), (17, 78))):
        x0 = 114 if finger == 0 else 130
        for j in range(4):  # base joint, two middle joints, tip: 7 px apart along x (a palm is 20 px)
            hand[base + j] = (x0 + 7 * j, y, 1.0)
        tips[base + 3] = np.array([x0 + 21.0, y])
        for target, value in ((image, SKIN), (person, 255)):
            cv2.line(target, (x0 - 4, y), (x0 + 23, y), value, 5)
    for target, value in ((image, SKIN), (person, 255)):
        cv2.rectangle(target, (108, 46), (134, 80), value, -1)  # the palm
    colours = {4: RED, 8: BLUE, 12: YELLOW, 16: (255, 0, 255), 20: (0, 255, 255)}
    for tip, colour in colours.items():
        cv2.circle(image, tuple(int(v) for v in tips[tip]), 2, colour, -1)
    moved = keypoints.copy()
    index = moved[LEFT_HAND_ROOT + 5 : LEFT_HAND_ROOT + 9]
    index[:, :2] = turn(index[:, :2].astype(np.float64), 40.0, centre=index[0, :2].astype(np.float64))
    frames, _ = render(image, person, keypoints, [keypoints, moved])
    for tip, colour in colours.items():
        assert np.linalg.norm(marker_centre(frames[0], colour, 120) - tips[tip]) < 1.5
    expected = turn(tips[8][None], 40.0, centre=np.array([130.0, 50.0]))[0]
    assert np.linalg.norm(marker_centre(frames[1], BLUE, 120) - expected) < 3.0
    for tip, colour in colours.items():
        if tip != 8:
            assert np.linalg.norm(marker_centre(frames[1], colour, 120) - tips[tip]) < 2.0, tip


def test_the_fill_continues_a_smooth_background_where_the_person_stood():
    """A sky-like background (a 2D colour gradient) behind a person-sized block: where the person stood,
    the fill is the gradient the block hid, within 2 levels on average (a 384 px long side: one pass at
    full resolution; at a quarter of it the error is 4 levels)."""
    from animate.engines.warp import fill_background

    height, width = 384, 216
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    truth = np.stack([40 + 150 * y / height, 120 + 100 * x / width, 230 - 60 * y / height], -1)
    truth = np.rint(truth).astype(np.uint8)
    person = np.zeros((height, width), bool)
    person[80:330, 70:150] = True
    image = truth.copy()
    image[person] = (200, 30, 30)
    out = fill_background(image, person)
    error = np.abs(out[person].astype(int) - truth[person]).mean()
    assert error < 2.0, error
