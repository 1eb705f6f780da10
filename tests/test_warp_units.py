"""The warp engine's small parts, each on a tiny synthetic scene (32 to 128 px) against a hand-made expectation.

These run in well under a second each, so a mutant of ``animate/engines/warp.py`` is usually caught here
before the scene tests (``test_warp_body.py``, ``test_warp_skeleton.py``) run at all.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from animate.body.parts import PART_NAMES
from animate.engines.warp import (
    BodyWarp,
    FrameMasks,
    WarpEngine,
    _extend_cut,
    _extend_person,
    _fill_holes,
    _inverse_2x2,
    _offbody_parts,
    _upsample_map,
    arm_regions,
    fill_background,
    hidden_hands,
    partial_reference,
)
from animate.motion.body_field import part_neighbours
from animate.motion.bundle import GuidanceBundle
from animate.pose.layout import (
    L_ANKLE,
    L_ELBOW,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    LEFT_HAND_ROOT,
    NOSE,
    R_ANKLE,
    R_ELBOW,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
    RIGHT_HAND_ROOT,
)

LEFT_HAND_PART, RIGHT_HAND_PART = PART_NAMES.index("left_hand"), PART_NAMES.index("right_hand")


def chebyshev_distance(mask: np.ndarray) -> np.ndarray:
    """Distance (max of |dx|, |dy|) of every pixel to the nearest ``mask`` pixel (scipy)."""
    return ndimage.distance_transform_cdt(~mask.astype(bool), metric="chessboard")


# ---------------------------------------------------------------- partial_reference, hidden_hands


def ankles(left: tuple[float, float, float], right: tuple[float, float, float]) -> np.ndarray:
    kp = np.zeros((133, 3), np.float32)
    kp[:, 2] = 1.0  # every other point seen: only the ankles decide
    kp[L_ANKLE], kp[R_ANKLE] = left, right
    return kp


def test_partial_reference_needs_one_seen_ankle_inside_the_picture():
    size = (100, 200)  # width, height
    gone = (50, 150, 0.0)
    assert not partial_reference(ankles((50, 150, 0.9), gone), size)
    assert not partial_reference(ankles(gone, (50, 150, 0.9)), size)
    assert partial_reference(ankles(gone, gone), size)
    # the score threshold is inclusive
    assert not partial_reference(ankles((50, 150, 0.3), gone), size)
    assert partial_reference(ankles((50, 150, 0.29), gone), size)
    assert not partial_reference(ankles((50, 150, 0.29), gone), size, threshold=0.2)
    # inside means 0 <= x < width and 0 <= y < height, on each axis and for either ankle
    for x, y, outside in [
        (0, 150, False),
        (-0.01, 150, True),
        (99.9, 150, False),
        (100, 150, True),
        (50, 0, False),
        (50, -0.01, True),
        (50, 199.9, False),
        (50, 200, True),
    ]:
        assert partial_reference(ankles((x, y, 1.0), gone), size) is outside, (x, y)
        assert partial_reference(ankles(gone, (x, y, 1.0)), size) is outside, (x, y)
    # the knees, toes and hips do not count: only points 15 and 16
    kp = ankles(gone, gone)
    kp[[13, 14, 17, 20]] = (50, 150, 1.0)
    assert partial_reference(kp, size)
    # width and height are not swapped: a point right of a tall picture's width is outside
    assert partial_reference(ankles((150, 50, 1.0), gone), size)
    assert not partial_reference(ankles((50, 150, 1.0), gone), size)


def hand_scores(left_found: int, right_found: int, score: float = 0.9) -> np.ndarray:
    kp = np.zeros((133, 3), np.float32)
    kp[LEFT_HAND_ROOT : LEFT_HAND_ROOT + left_found, 2] = score
    kp[RIGHT_HAND_ROOT : RIGHT_HAND_ROOT + right_found, 2] = score
    return kp


def test_hidden_hands_are_those_with_fewer_than_half_of_their_21_points_found():
    assert hidden_hands(hand_scores(21, 21)) == ()
    assert hidden_hands(hand_scores(0, 0)) == (LEFT_HAND_PART, RIGHT_HAND_PART)
    assert hidden_hands(hand_scores(0, 21)) == (LEFT_HAND_PART,)
    assert hidden_hands(hand_scores(21, 0)) == (RIGHT_HAND_PART,)
    # 11 of 21 found is more than half, 10 is less
    assert hidden_hands(hand_scores(11, 10)) == (RIGHT_HAND_PART,)
    assert hidden_hands(hand_scores(10, 11)) == (LEFT_HAND_PART,)
    # exactly at the threshold counts as found; just under does not; the threshold is a parameter
    assert hidden_hands(hand_scores(21, 21, score=0.3)) == ()
    assert hidden_hands(hand_scores(21, 21, score=0.29)) == (LEFT_HAND_PART, RIGHT_HAND_PART)
    assert hidden_hands(hand_scores(21, 21, score=0.29), threshold=0.2) == ()
    # a hand is its own 21 points: the left hand with 10 found stays hidden when the right hand's first
    # point (the 22nd after the left root) is found, and the body's points do not count for either
    kp = hand_scores(10, 1)
    kp[:LEFT_HAND_ROOT, 2] = 1.0
    assert hidden_hands(kp) == (LEFT_HAND_PART, RIGHT_HAND_PART)
    kp = hand_scores(11, 11)
    kp[LEFT_HAND_ROOT, 2] = 0.0  # the left hand's first point lost: 10 of 21
    assert hidden_hands(kp) == (LEFT_HAND_PART,)


def test_arm_regions_skip_a_forearm_shorter_than_2_px():
    kp = np.zeros((133, 3), np.float32)
    person = np.ones((40, 40), bool)
    kp[L_ELBOW], kp[L_WRIST] = (20, 20, 1.0), (20, 21.9, 1.0)
    assert not arm_regions(kp, person).any()
    kp[L_WRIST] = (20, 22, 1.0)  # exactly 2 px: a capsule of radius round(0.24 + 2) = 2
    regions = arm_regions(kp, person)
    assert (regions[21, 19:22] == 1).all() and (regions[19:24, 20] == 1).all()
    assert not regions[:, :15].any() and not regions[:, 26:].any() and not regions[27:].any()
    # a custom threshold is used for the elbow and wrist
    kp[L_WRIST, 2] = 0.25
    assert not arm_regions(kp, person).any()
    assert (arm_regions(kp, person, threshold=0.2) == regions).all()


def test_arm_regions_hand_hull_uses_only_seen_points_with_the_threshold():
    kp = np.zeros((133, 3), np.float32)
    person = np.ones((120, 80), bool)
    kp[L_ELBOW], kp[L_WRIST] = (40, 10, 1.0), (40, 60, 1.0)  # length 50: radius 8
    kp[LEFT_HAND_ROOT : LEFT_HAND_ROOT + 3] = [(30, 90, 0.3), (50, 90, 0.3), (40, 100, 0.3)]
    kp[LEFT_HAND_ROOT + 3] = (40, 5, 0.29)  # not seen: must not stretch the hull up
    regions = arm_regions(kp, person)
    # grown by a square of 2 x round(7.5) + 1 = 17 px: 8 px below the hull's bottom tip, not 9
    assert regions[108, 40] == 1 and regions[109, 40] == 0
    assert regions[90, 22] == 1 and regions[90, 21] == 0
    assert regions[76, 40] == 0  # between the capsule's end (68) and the grown hull (82)
    kp[LEFT_HAND_ROOT + 2, 2] = 0.29  # two seen points: no hull
    assert not arm_regions(kp, person)[85:].any()
    # with a lower threshold the fourth point joins the hull (which then spans the forearm)
    kp[LEFT_HAND_ROOT + 2, 2] = 0.3
    assert arm_regions(kp, person, threshold=0.2)[76, 40] == 1


def test_arm_regions_a_short_left_forearm_does_not_stop_the_right_and_the_capsule_is_exact():
    kp = np.zeros((133, 3), np.float32)
    person = np.ones((220, 220), bool)
    kp[L_ELBOW], kp[L_WRIST] = (20, 20, 1.0), (20, 21, 1.0)  # 1 px: skipped
    kp[R_ELBOW], kp[R_WRIST] = (150, 50, 1.0), (150, 150, 1.0)  # 100 px: r = round(12 + 2) = 14
    regions = arm_regions(kp, person)
    assert not (regions & 1).any()
    # OpenCV draws the 2 r + 1 = 29 px line as a capsule reaching 15 px from the segment: x 135..165
    assert (regions[100, 135:166] == 2).all() and regions[100, 134] == 0 and regions[100, 166] == 0
    assert (
        regions[35, 150] == 2 and regions[34, 150] == 0 and regions[165, 150] == 2 and regions[166, 150] == 0
    )


def hand_points(
    kp: np.ndarray, root: int, points: dict[int, tuple[float, float]], score: float = 1.0
) -> None:
    for index, (x, y) in points.items():
        kp[root + index] = (x, y, score)


def test_hand_regions_by_hand():
    """A hand's region: the hull of its seen keypoints (at least 3) grown by a square of
    2 max(2, round(0.15 palm)) + 1 px, palm = wrist to middle knuckle (points 0 and 9) when both are
    seen; bit 1 for the left hand, 2 for the right, only inside the person."""
    from animate.engines.warp import hand_regions

    person = np.ones((120, 160), bool)
    kp = np.zeros((133, 3), np.float32)
    # left hand: wrist (40, 40), middle knuckle (40, 80): palm 40, grown by round(6) = 6 px
    hand_points(kp, LEFT_HAND_ROOT, {0: (40, 40), 5: (30, 70), 9: (40, 80), 17: (50, 70)})
    regions = hand_regions(kp, person)
    assert regions[86, 40] == 1 and regions[87, 40] == 0  # 6 px below the knuckle
    assert regions[70, 24] == 1 and regions[70, 23] == 0  # 6 px left of point 5
    assert regions[34, 40] == 1 and regions[33, 40] == 0  # 6 px above the wrist
    assert not (regions & 2).any()
    # the middle knuckle not seen: no palm, grown by 2 px around the three other points
    unseen = kp.copy()
    unseen[LEFT_HAND_ROOT + 9, 2] = 0.29
    regions = hand_regions(unseen, person)
    assert regions[72, 40] == 1 and regions[73, 40] == 0 and regions[70, 28] == 1 and regions[70, 27] == 0
    # exactly at the threshold is seen; a custom threshold applies
    at = kp.copy()
    at[LEFT_HAND_ROOT : LEFT_HAND_ROOT + 21, 2] *= 0.3
    assert hand_regions(at, person)[86, 40] == 1
    assert not hand_regions(at, person, threshold=0.31).any()
    # two seen points: no region; the right hand still gets its own (bit 2), which overlaps the left
    two = np.zeros((133, 3), np.float32)
    hand_points(two, LEFT_HAND_ROOT, {0: (40, 40), 9: (40, 80)})
    hand_points(two, RIGHT_HAND_ROOT, {0: (100, 40), 5: (90, 70), 9: (100, 80)})
    regions = hand_regions(two, person)
    assert not (regions & 1).any() and regions[60, 97] == 2
    both = kp.copy()
    hand_points(both, RIGHT_HAND_ROOT, {0: (45, 45), 5: (35, 75), 9: (45, 85)})
    regions = hand_regions(both, person)
    assert regions[70, 40] == 3 and regions[35, 40] == 1 and regions[90, 45] == 2
    # the person mask clips
    clipped = hand_regions(kp, person & (np.arange(160) < 40)[None])
    assert clipped[60, 39] == 1 and not clipped[:, 40:].any()


# ---------------------------------------------------------------- fill_background


def test_fill_background_removes_the_person_and_leaves_far_pixels_exact():
    rng = np.random.default_rng(1)
    height, width = 96, 128
    image = np.empty((height, width, 3), np.uint8)
    image[:, : width // 2] = (40, 90, 200)  # blue half
    image[:, width // 2 :] = (60, 180, 70)  # green half
    noise = rng.integers(-6, 7, (height, width, 3))
    image = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
    person = np.zeros((height, width), bool)
    person[30:70, 44:84] = True  # straddles the halves
    original = image.copy()
    image_with_person = image.copy()
    image_with_person[person] = (250, 20, 20)
    out = fill_background(image_with_person, person)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (image_with_person == np.where(person[..., None], (250, 20, 20), original)).all()  # input kept
    # far from the person (grown by 8 px, then a 2 px Gaussian edge of radius 8): exactly the input
    distance = chebyshev_distance(person)
    far = distance > 16
    assert (out[far] == image_with_person[far]).all()
    # where the person was, the background it stood on: the blue half's colour left of the middle, the
    # green's right of it (no red left anywhere)
    assert (out[..., 0] < 120).all()
    left, right = person.copy(), person.copy()
    left[:, width // 2 - 12 :] = False
    right[:, : width // 2 + 12] = False
    assert np.abs(out[left].astype(int) - (40, 90, 200)).max(1).mean() < 14
    assert np.abs(out[right].astype(int) - (60, 180, 70)).max(1).mean() < 14
    # next to the person (within the grown region), the fill dominates: no trace of red either
    near = (distance > 0) & (distance <= 6)
    assert np.abs(out[near].astype(int) - original[near]).max(1).mean() < 14


def test_fill_background_blend_is_the_grown_mask_blurred():
    """On a black image with a white fill, the output is the alpha itself: the person grown by 8 px
    (two 9x9 dilations) blurred with sigma 2 (scipy's Gaussian as the reference), times 255, rounded."""
    height, width = 64, 64
    person = np.zeros((height, width), bool)
    person[28:36, 28:36] = True
    image = np.zeros((height, width, 3), np.uint8)
    image[person] = 255  # the person is white; its surroundings are black: the fill is dark
    out = fill_background(image, person)
    grown = chebyshev_distance(person) <= 8
    alpha = ndimage.gaussian_filter(grown.astype(np.float64), 2.0, truncate=4.0, mode="mirror")
    # outside the grown region the input is black, so output = fill * alpha: small, and zero where
    # alpha is zero (more than 16 px away)
    assert (out[chebyshev_distance(person) > 16] == 0).all()
    # inside the person (alpha nearly 1) the white person is gone: the fill comes from the black border
    assert out[person].max() < 60
    # a ring just outside the grown region: the blend leaves 1 - alpha of the black input, so the output
    # there is at most alpha * 255
    ring = (chebyshev_distance(person) >= 12) & (chebyshev_distance(person) <= 16)
    assert (out[ring].max(1) <= np.ceil(alpha[ring] * 255 + 0.5)).all()


def test_fill_background_rounds_and_copies():
    image = np.full((96, 96, 3), 77, np.uint8)
    person = np.zeros((96, 96), bool)
    out = fill_background(image, person)
    assert (out == image).all() and out is not image
    out[0, 0] = 0
    assert image[0, 0, 0] == 77
    # a uniform picture stays uniform wherever the person was (the fill is that colour, up to the
    # bicubic upsampling's ripple)
    person[38:58, 38:58] = True
    image[person] = 200
    out = fill_background(image, person)
    assert np.abs(out.astype(int) - 77).max() <= 2
    assert (out[chebyshev_distance(person) > 16] == 77).all()
    assert np.mean(out == 77) > 0.9
    # a person the colour of the picture: where the blend weight is small (4 to 8 px outside the grown
    # person) the output is exactly that colour (the blend is rounded, not truncated: the fill ripples
    # by a level or two, and 77 (1 - a) + 77 a in float32 falls a hair under 77 at some pixels)
    out = fill_background(np.full((96, 96, 3), 77, np.uint8), person)
    distance = chebyshev_distance(person)
    assert (out[(distance >= 12) & (distance <= 16)] == 77).all()


def test_fill_background_default_scale_brings_the_long_side_to_384_px():
    """scale defaults to ceil(long side / 384), at least 1: the result equals the explicit scale's and
    differs from the neighbouring scales'."""
    rng = np.random.default_rng(8)
    for height, width, scale in ((200, 384, 1), (200, 385, 2), (769, 200, 3), (100, 120, 1)):
        image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), np.uint8), (0, 0), 3)
        person = np.zeros((height, width), bool)
        person[height // 3 : height // 2, width // 3 : width // 2] = True
        out = fill_background(image, person)
        assert (out == fill_background(image, person, scale=scale)).all(), (height, width)
        assert not (out == fill_background(image, person, scale=scale + 1)).all(), (height, width)
        if scale > 1:
            assert not (out == fill_background(image, person, scale=scale - 1)).all(), (height, width)


# ---------------------------------------------------------------- _extend_cut, _extend_person


def test_extend_cut_repeats_the_last_row_when_the_person_touches_the_bottom():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (64, 100, 3), np.uint8)
    person = np.zeros((64, 100), bool)
    person[20:, 40:45] = True  # 5 px of the bottom row: exactly 5% of the width
    out_image, out_person = _extend_cut(image, person)
    assert out_image.shape == (80, 100, 3) and out_person.shape == (80, 100)  # + max(8, 64 // 4)
    assert (out_image[:64] == image).all() and (out_person[:64] == person).all()
    assert (out_image[64:] == image[-1]).all() and (out_person[64:] == person[-1]).all()
    person[-1, 44] = False  # 4 px: under 5%, not a cut
    same_image, same_person = _extend_cut(image, person)
    assert same_image is image and same_person is person
    # a short picture still gets 8 rows
    short, short_person = _extend_cut(image[:20], np.ones((20, 100), bool))
    assert short.shape == (28, 100, 3) and short_person.all()
    assert (short[20:] == image[19]).all()
    # the bottom row decides, not the top one
    top = np.zeros((64, 100), bool)
    top[0] = True
    assert _extend_cut(image, top)[0] is image


def test_extend_person_paints_the_surroundings_with_the_nearest_core_colour():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (48, 64, 3), np.uint8)
    person = np.zeros((48, 64), bool)
    person[10:30, 20:40] = True
    out = _extend_person(image, person)
    core = np.zeros_like(person)
    core[11:29, 21:39] = True  # eroded by one pixel
    assert (out[core] == image[core]).all()
    # straight left, right, above and below the core the nearest core pixel is unique
    for y in range(11, 29):
        assert (out[y, :21] == image[y, 21]).all() and (out[y, 39:] == image[y, 38]).all()
    for x in range(21, 39):
        assert (out[:11, x] == image[11, x]).all() and (out[29:, x] == image[28, x]).all()
    assert out.dtype == np.uint8 and out.shape == image.shape
    # a person too thin to erode keeps itself as the core; no person at all: a copy
    line = np.zeros_like(person)
    line[20, 5:60] = True
    thin = _extend_person(image, line)
    assert (thin[20, 5:60] == image[20, 5:60]).all() and (thin[0, 30] == image[20, 30]).all()
    copy = _extend_person(image, np.zeros_like(person))
    assert (copy == image).all() and copy is not image


# ---------------------------------------------------------------- _fill_holes, _inverse_2x2, _upsample_map


def test_fill_holes_matches_scipy():
    rng = np.random.default_rng(4)
    for _ in range(20):
        mask = (rng.random((30, 40)) < 0.55).astype(np.uint8)
        expected = ndimage.binary_fill_holes(mask).astype(np.uint8)  # 4-connected background, as flood fill
        out = _fill_holes(mask)
        assert out.dtype == np.uint8 and out.shape == mask.shape
        assert (out == expected).all()
    ring = np.zeros((12, 12), np.uint8)
    ring[2:10, 2:10] = 1
    ring[4:8, 4:8] = 0
    assert _fill_holes(ring)[2:10, 2:10].all() and _fill_holes(ring).sum() == 64
    notch = ring.copy()
    notch[4:6, 0:4] = 0  # the hole opens to the border: not a hole
    assert (_fill_holes(notch) == notch).all()


def test_inverse_2x2_matches_numpy_and_falls_back_to_the_identity():
    rng = np.random.default_rng(5)
    jac = rng.uniform(-2, 2, (200, 2, 2))
    det = np.linalg.det(jac)
    jac = jac[np.abs(det) > 0.1]
    out = _inverse_2x2(jac)
    np.testing.assert_allclose(out, np.linalg.inv(jac), rtol=1e-10, atol=1e-12)
    assert out.dtype == jac.dtype
    assert (np.linalg.det(jac) < 0).any()  # negative determinants are inverted too
    f32 = jac.astype(np.float32)
    out32 = _inverse_2x2(f32)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, np.linalg.inv(f32.astype(np.float64)), rtol=1e-4, atol=1e-4)
    # |det| under 0.05: the identity; exactly 0.05 (0.25 * 0.2 in float64) is still inverted
    special = np.array(
        [
            [[0.25, 0.0], [0.0, 0.2]],
            [[0.25, 0.0], [0.0, 0.19]],
            [[-0.25, 0.0], [0.0, 0.19]],
            [[1.0, 2.0], [0.5, 1.0]],  # singular
            [[0.0, -2.0], [3.0, 0.0]],  # det +6, off-diagonal only
        ]
    )
    out = _inverse_2x2(special)
    np.testing.assert_allclose(out[0], [[4.0, 0.0], [0.0, 5.0]])
    np.testing.assert_array_equal(out[1], np.eye(2))
    np.testing.assert_array_equal(out[2], np.eye(2))
    np.testing.assert_array_equal(out[3], np.eye(2))
    np.testing.assert_allclose(out[4], [[0.0, 1 / 3], [-0.5, 0.0]])
    assert (special[1] == [[0.25, 0.0], [0.0, 0.19]]).all()  # the input is left alone


def test_upsample_map_is_bilinear_where_smooth():
    h, w = 10, 12
    ys, xs = np.mgrid[:h, :w].astype(np.float32)
    maps = np.stack([2.5 * xs + 3.0, 1.5 * ys + 0.25 * xs + 7.0], -1).astype(np.float32)
    assert _upsample_map(maps, 1) is maps
    for scale in (2, 3):
        out = _upsample_map(maps, scale)
        assert out.shape == (h * scale, w * scale, 2) and out.dtype == np.float32
        # a linear map stays linear: at output pixel X the input coordinate is (X + 0.5) / scale - 0.5
        # (pixel centres), inside the border half-pixel where the resize clamps
        Y, X = np.mgrid[: h * scale, : w * scale].astype(np.float64)
        sx, sy = (X + 0.5) / scale - 0.5, (Y + 0.5) / scale - 0.5
        expected = np.stack([2.5 * sx + 3.0, 1.5 * sy + 0.25 * sx + 7.0], -1)
        inner = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
        np.testing.assert_allclose(out[inner], expected[inner], atol=1e-3)


@pytest.mark.parametrize("channel", [0, 1])
def test_upsample_map_takes_the_nearest_value_across_a_jump(channel):
    """A step between two columns is a jump when it is larger than 3 x scale + 2 px (8 at scale 2): then
    every output pixel takes one of the two values; a step of 8 is still blended."""
    for step, jump in ((8.0, False), (8.25, True), (-8.25, True)):
        maps = np.full((8, 10, 2), 20.0, np.float32)
        maps[:, 5:, channel] += step
        out = _upsample_map(maps, 2)[..., channel]
        values = {20.0, 20.0 + step}
        blended = ~np.isin(out, list(values))
        if jump:
            assert not blended.any(), (step, out[0])
            # the nearest low-resolution pixel: columns 0..9 from 0..4, 10.. from 5..
            assert (out[:, :10] == 20.0).all() and (out[:, 10:] == 20.0 + step).all()
        else:
            # bilinear: output column 9 lies at 4.25, a quarter of the way to the step
            np.testing.assert_allclose(out[:, 9], 20.0 + 0.25 * step, atol=1e-4)
            np.testing.assert_allclose(out[:, 10], 20.0 + 0.75 * step, atol=1e-4)
        assert (out[:, :8] == 20.0).all() and (out[:, 12:] == 20.0 + step).all()
    # an unset (-1) region next to set values far away: no blend of the two at scale 3 either
    maps = np.full((6, 6, 2), -1.0, np.float32)
    maps[:, 3:] = 30.0
    out = _upsample_map(maps, 3)
    assert (out[:, :9] == -1).all() and np.allclose(out[:, 9:], 30.0, atol=1e-4)


# ---------------------------------------------------------------- FrameMasks, _offbody_parts


def test_frame_masks_place_their_crops_at_the_origin():
    silhouette = np.array([[1, 1, 0], [0, 1, 0]], bool)
    body = np.array([[0, 1, 0], [0, 1, 0]], bool)
    fill = np.array([[0, 0, 0], [0, 1, 1]], bool)
    masks = FrameMasks((6, 8), (3, 4), silhouette, body, fill)
    for full, crop in ((masks.silhouette, silhouette), (masks.body, body), (masks.fill, fill)):
        assert full.shape == (6, 8) and full.dtype == bool
        assert (full[3:5, 4:7] == crop).all()
        assert full.sum() == crop.sum()
    # the crops are the masks' only content: each property reads its own crop
    assert (masks.body[3:5, 4:7] == body).all() and not (masks.fill[3:5, 4:7] == body).all()


def test_offbody_parts_take_the_nearest_part_unless_a_foreign_one_is_nearly_as_close():
    near = part_neighbours()
    head, neck, left_hand = (PART_NAMES.index(n) for n in ("head", "neck", "left_hand"))
    assert near[head, neck] and not near[head, left_hand]
    for other, neighbour in ((left_hand, False), (neck, True)):
        part = np.full((40, 80), -1, np.int16)
        part[10:30, 5:25] = head
        part[10:30, 55:75] = other
        person = np.zeros((40, 80), bool)
        person[8:32, 3:77] = True  # the body and everything between the two blocks
        out = _offbody_parts(part, person, near)
        assert out.dtype == np.int16 and out.shape == part.shape
        assert (out[part >= 0] == -1).all() and (out[~person] == -1).all()
        # 1 px right of the head: own distance 1, the hand 29 px away > 2 x 1 + 4
        assert out[20, 25] == head and out[20, 54] == other
        # the middle of the gap (15 px from both): a foreign part is as close: neither
        assert out[20, 40] == (head if neighbour else -1) or out[20, 40] == (other if neighbour else -1)
        if not neighbour:
            # own distance d, foreign 31 - d: clear while 31 - d > 2 d + 4, i.e. d < 9
            assert out[20, 24 + 8] == head and out[20, 24 + 9] == -1
            assert out[20, 55 - 8] == other and out[20, 55 - 9] == -1
        else:
            assert (out[20, 25:55] >= 0).all()
    # nothing to do without a body or without off-body person pixels
    empty = np.full((10, 10), -1, np.int16)
    assert (_offbody_parts(empty, np.ones((10, 10), bool), near) == -1).all()
    full = np.zeros((10, 10), np.int16)
    assert (_offbody_parts(full, np.ones((10, 10), bool), near) == -1).all()


def test_offbody_parts_count_the_pelvis_as_body():
    """Part 0 is the pelvis, body like any other part: a skirt pixel beside it takes the pelvis, the pelvis
    itself is not off-body."""
    near = part_neighbours()
    pelvis, head = PART_NAMES.index("pelvis"), PART_NAMES.index("head")
    assert pelvis == 0
    part = np.full((40, 80), -1, np.int16)
    part[10:30, 5:25] = pelvis
    part[10:30, 60:75] = head
    person = np.zeros((40, 80), bool)
    person[8:32, 3:30] = True  # the pelvis with a 5 px skirt to its right
    person[10:30, 60:75] = True
    out = _offbody_parts(part, person, near)
    assert (out[part == pelvis] == -1).all()
    assert (out[12:28, 25:30] == pelvis).all()


def _visibility(shown: np.ndarray) -> BodyWarp:
    """A BodyWarp with only what ``_visible`` reads: the reference shows parts ``shown`` at depth 1."""
    warp = object.__new__(BodyWarp)
    warp.depth_limit = np.full(shown.shape, 1.0 + BodyWarp.DEPTH_TOLERANCE, np.float32)
    warp.reference_part = shown
    warp.neighbours = part_neighbours()
    warp.arm_region = np.zeros(shown.shape, np.uint8)
    warp.part_arm = np.zeros(24, np.uint8)
    warp.off_person = np.zeros(shown.shape, np.float32)
    warp.part_hand = np.zeros(24, np.uint8)
    warp.hand_region = np.zeros(shown.shape, np.uint8)
    warp.hand_colours = {}
    return warp


def test_visible_where_the_reference_shows_the_pelvis_only_for_its_neighbours():
    pelvis, spine1, spine2 = (PART_NAMES.index(n) for n in ("pelvis", "spine1", "spine2"))
    near = part_neighbours()
    assert near[spine1, pelvis] and not near[spine2, pelvis] and not near[spine1, 1]
    shown = np.full((10, 10), -1, np.int16)
    shown[:, :5] = pelvis
    warp = _visibility(shown)
    points = np.array([[2.0, 5.0], [2.0, 5.0], [7.0, 5.0], [2.0, 5.0]])
    parts = np.array([spine1, spine2, spine2, pelvis])
    seen = warp._visible(points, np.ones(4, np.float32), parts)
    # spine1 and the pelvis itself over the pelvis: seen; spine2 over the pelvis: another part hides it;
    # off the reference body (shown -1): anything is seen at any depth
    assert seen.tolist() == [True, False, True, True]
    assert not warp._visible(points[:1], np.array([1.2], np.float32), parts[:1])[0]  # behind: hidden


# ---------------------------------------------------------------- WarpEngine._compose


def gradient_image(height: int, width: int) -> np.ndarray:
    """R = 2x + 10, G = 3y + 5, B = 100: bilinear sampling of it at (x, y) is exact."""
    ys, xs = np.mgrid[:height, :width]
    return np.stack([2 * xs + 10, 3 * ys + 5, np.full_like(xs, 100)], -1).astype(np.uint8)


def square_pixels(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    ys, xs = np.mgrid[y0:y1, x0:x1]
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)


def compose(reference, background, pixels, positions, layer=None, jacobians=None, edge_sigma=1.0):
    n = len(pixels)
    layer = np.zeros(n, np.int32) if layer is None else layer
    jacobians = np.broadcast_to(np.eye(2), (n, 2, 2)).copy() if jacobians is None else jacobians
    return WarpEngine(edge_sigma=edge_sigma)._compose(
        reference, background, pixels, positions, layer, jacobians
    )


def test_compose_carries_a_square_by_a_whole_pixel_shift():
    reference = np.random.default_rng(6).integers(0, 256, (64, 64, 3), np.uint8)
    background = np.full((64, 64, 3), 50, np.uint8)
    pixels = square_pixels(10, 12, 30, 40)  # x 10..29, y 12..39
    frame, silhouette = compose(reference, background, pixels, pixels + np.array([7, -5]))
    expected = np.zeros((64, 64), bool)
    expected[7:35, 17:37] = True
    assert (silhouette == expected).all()
    # 4 px inside the edge (the blur's radius at sigma 1): exactly the shifted reference
    inner = np.zeros_like(expected)
    inner[11:31, 21:33] = True
    assert (frame[inner] == reference[16:36, 14:26].reshape(-1, 3)).all()
    # 2 px or more outside: the background untouched
    outside = chebyshev_distance(expected) >= 2
    assert (frame[outside] == 50).all()
    assert frame.dtype == np.uint8


def test_compose_soft_edge_is_a_gaussian_of_the_silhouette_cut_one_pixel_out():
    """alpha = Gaussian(silhouette, sigma) times the silhouette dilated by 1 px; the frame is the blend
    (rounded) of the background and the warped reference. A uniform reference, so warped = its colour
    inside; outside the silhouette the map is unset and reads the reference's replicated corner."""
    reference = np.full((48, 48, 3), 200, np.uint8)
    reference[0, 0] = (0, 100, 250)  # what unset map entries read (remap replicates the border at -1)
    background = np.full((48, 48, 3), 20, np.uint8)
    pixels = square_pixels(10, 10, 38, 38)
    for sigma in (1.0, 2.0):
        frame, silhouette = compose(reference, background, pixels, pixels, edge_sigma=sigma)
        assert silhouette[10:38, 10:38].all() and silhouette.sum() == 28 * 28
        k = np.arange(-int(4 * sigma), int(4 * sigma) + 1)
        g = np.exp(-(k**2) / (2 * sigma**2))
        g /= g.sum()
        # along row 24 (the middle of the left edge), 1-D: alpha at column x is the kernel mass over
        # columns >= 10
        for x, inside in ((9, False), (10, True), (11, True)):
            alpha = g[(x + k) >= 10].sum()
            colour = reference[24, 24] if inside else reference[0, 0]
            expected = (20 * (1 - alpha) + colour.astype(float) * alpha + 0.5).astype(int)
            assert np.abs(frame[24, x].astype(int) - expected).max() <= 1, (sigma, x, frame[24, x], expected)
        assert (frame[24, :9] == 20).all()  # cut 1 px outside the silhouette, however wide the blur
        # the same across the top edge (column 24, rows 9..11)
        for y, inside in ((9, False), (10, True), (11, True)):
            alpha = g[(y + k) >= 10].sum()
            colour = reference[24, 24] if inside else reference[0, 0]
            expected = (20 * (1 - alpha) + colour.astype(float) * alpha + 0.5).astype(int)
            assert np.abs(frame[y, 24].astype(int) - expected).max() <= 1, (sigma, y, frame[y, 24], expected)


def test_compose_front_layer_wins_and_later_lower_layers_do_not_overwrite():
    reference = np.zeros((40, 80, 3), np.uint8)
    reference[:, :40] = (255, 0, 0)
    reference[:, 40:] = (0, 0, 255)
    background = np.full((40, 80, 3), 128, np.uint8)
    red, blue = square_pixels(5, 5, 25, 25), square_pixels(45, 5, 65, 25)
    target = square_pixels(30, 10, 50, 30)
    for red_layer, blue_layer, winner in ((2, 1, (255, 0, 0)), (1, 2, (0, 0, 255)), (-1, 0, (0, 0, 255))):
        for order in (0, 1):  # both orders of the pixel list
            pixels = np.concatenate([red, blue] if order == 0 else [blue, red])
            layers = np.array(
                [red_layer] * 400 + [blue_layer] * 400
                if order == 0
                else [blue_layer] * 400 + [red_layer] * 400,
                np.int32,
            )
            frame, silhouette = compose(
                reference, background, pixels, np.concatenate([target, target]), layers
            )
            assert silhouette[10:30, 30:50].all() and silhouette.sum() == 400
            assert (frame[14:26, 34:46] == winner).all(), (red_layer, blue_layer, order)


def test_compose_stretch_samples_the_reference_at_the_inverse_position():
    """Positions = 2 x pixels, jacobians 2I: every other target pixel is covered, the holes between are
    closed and borrow a neighbour's source, and each target pixel t samples the reference at t / 2 through
    the first-order inverse. The reference is a linear gradient, so bilinear sampling is exact."""
    reference = gradient_image(40, 40)
    background = np.full((80, 80, 3), 0, np.uint8)
    pixels = square_pixels(8, 8, 28, 28)
    jacobians = np.broadcast_to(2 * np.eye(2), (len(pixels), 2, 2)).copy()
    frame, silhouette = compose(reference, background, pixels, 2 * pixels, jacobians=jacobians)
    assert silhouette[16:55, 16:55].all()
    ty, tx = np.mgrid[20:52, 20:52]  # away from the soft edge
    expected_r = 2 * (tx / 2) + 10
    expected_g = 3 * (ty / 2) + 5
    assert np.abs(frame[20:52, 20:52, 0] - expected_r).max() <= 1
    assert np.abs(frame[20:52, 20:52, 1] - expected_g).max() <= 1
    assert (frame[20:52, 20:52, 2] == 100).all()


def test_compose_steps_at_most_one_and_a_half_pixels_from_the_borrowed_source():
    """A covered frame with a 6-row slit inside: the slit is filled (enclosed, within 3 px of cover), and
    its pixels borrow the nearest covered pixel above or below, stepping back toward their own position
    by at most 1.5 px (the first-order inverse is only trusted that far)."""
    reference = gradient_image(64, 64)
    background = np.zeros((64, 64, 3), np.uint8)
    pixels = square_pixels(8, 8, 56, 40)
    slit = (pixels[:, 1] >= 20) & (pixels[:, 1] < 26) & (pixels[:, 0] >= 14) & (pixels[:, 0] < 50)
    pixels = pixels[~slit]
    frame, silhouette = compose(reference, background, pixels, pixels.copy())
    assert silhouette[8:40, 8:56].all()
    x = np.arange(24, 40)
    # rows 20 and 25: one px from cover, they sample themselves
    assert np.abs(frame[20, x, 1].astype(int) - (3 * 20 + 5)).max() <= 1
    assert np.abs(frame[25, x, 1].astype(int) - (3 * 25 + 5)).max() <= 1
    # row 22: 3 px below the cover at row 19, 4 above row 26: samples row 19 + 1.5
    assert np.abs(frame[22, x, 1].astype(float) - (3 * 20.5 + 5)).max() <= 1
    # row 23: 3 px above row 26: samples row 26 - 1.5
    assert np.abs(frame[23, x, 1].astype(float) - (3 * 24.5 + 5)).max() <= 1
    assert np.abs(frame[22:24, x, 0].astype(int) - (2 * x + 10)).max() <= 1  # columns follow


def test_compose_holes_take_their_nearest_covered_pixels_source():
    """With a steep jacobian the first-order step is nil, so each pixel shows exactly the reference
    pixel of its source: in the slit, that of the nearest covered pixel (the row above for the upper
    three rows, the row below for the lower three, in the same column)."""
    reference = gradient_image(64, 64)
    background = np.zeros((64, 64, 3), np.uint8)
    pixels = square_pixels(8, 8, 56, 40)
    slit = (pixels[:, 1] >= 20) & (pixels[:, 1] < 26) & (pixels[:, 0] >= 14) & (pixels[:, 0] < 50)
    pixels = pixels[~slit]
    jacobians = np.broadcast_to(1000 * np.eye(2), (len(pixels), 2, 2)).copy()
    frame, _ = compose(reference, background, pixels, pixels.copy(), jacobians=jacobians)
    x = np.arange(18, 46)
    for row, source_row in ((20, 19), (21, 19), (22, 19), (23, 26), (24, 26), (25, 26)):
        assert (frame[row, x, 1] == 3 * source_row + 5).all(), (row, frame[row, x, 1])
        assert (frame[row, x, 0] == 2 * x + 10).all(), row


def test_compose_fills_holes_only_within_3_px_of_cover():
    """An enclosed slit 8 rows tall: rows within 3 px of the cover above or below are drawn, the two
    middle rows (4 px from both) are not: they show the background."""
    reference = gradient_image(64, 64)
    background = np.zeros((64, 64, 3), np.uint8)
    pixels = square_pixels(8, 8, 56, 44)
    slit = (pixels[:, 1] >= 20) & (pixels[:, 1] < 28) & (pixels[:, 0] >= 14) & (pixels[:, 0] < 50)
    pixels = pixels[~slit]
    frame, silhouette = compose(reference, background, pixels, pixels.copy())
    assert silhouette[20:23, 14:50].all() and silhouette[25:28, 14:50].all()
    assert not silhouette[23:25, 18:46].any()
    assert (frame[23:25, 22:42, 1] < 10).all()  # only the soft edge's bleed, not the reference (G 74+)


def test_compose_inverts_a_sheared_field():
    """positions = A p with A = [[2, 0], [0.5, 1]] (stretched and sheared): each target pixel t samples
    the reference at A^-1 t = (t_x / 2, t_y - t_x / 4), both components of the inverse used."""
    reference = gradient_image(48, 48)
    background = np.zeros((96, 96, 3), np.uint8)
    pixels = square_pixels(8, 8, 40, 40)
    a = np.array([[2.0, 0.0], [0.5, 1.0]])
    frame, silhouette = compose(
        reference, background, pixels, pixels @ a.T, jacobians=np.broadcast_to(a, (len(pixels), 2, 2)).copy()
    )
    ty, tx = np.mgrid[24:40, 24:70]
    inner = silhouette[24:40, 24:70] & (ty - tx / 4 > 10) & (ty - tx / 4 < 36)
    assert inner.sum() > 300
    expected_r = 2 * (tx / 2) + 10
    expected_g = 3 * (ty - tx / 4) + 5
    assert np.abs(frame[24:40, 24:70, 0] - expected_r)[inner].max() <= 1
    assert np.abs(frame[24:40, 24:70, 1] - expected_g)[inner].max() <= 1


def test_compose_keeps_only_targets_inside_the_frame():
    reference = gradient_image(40, 40)
    background = np.full((40, 40, 3), 9, np.uint8)
    pixels = square_pixels(5, 5, 25, 25)
    # shifted so the square covers x -5..14 and y 20..39: its left part and nothing below are lost
    frame, silhouette = compose(reference, background, pixels, pixels + np.array([-10, 15]))
    expected = np.zeros((40, 40), bool)
    expected[20:40, 0:15] = True
    assert (silhouette == expected).all()
    assert (frame[25:36, 0:10, 0] == reference[10:21, 10:20, 0]).all()
    assert (frame[39, 0:10, 1] == reference[24, 10:20, 1]).all()
    # right and bottom edges: a square landing at x 20..39, y 0..19
    frame, silhouette = compose(reference, background, pixels, pixels + np.array([15, -5]))
    expected = np.zeros((40, 40), bool)
    expected[0:20, 20:40] = True
    assert (silhouette == expected).all()
    assert (frame[0:16, 24:40] == reference[5:21, 9:25]).all()
    # only the square's last column or row lands on the frame's first or last column or row: kept
    for shift, line in (
        ((-24, 0), (slice(5, 25), 0)),
        ((34, 0), (slice(5, 25), 39)),
        ((0, -24), (0, slice(5, 25))),
        ((0, 34), (39, slice(5, 25))),
    ):
        frame, silhouette = compose(reference, background, pixels, pixels + np.array(shift))
        assert silhouette[line].all(), shift
    # everything outside: the background, and an empty silhouette
    frame, silhouette = compose(reference, background, pixels, pixels + np.array([100, 0]))
    assert (frame == 9).all() and not silhouette.any() and silhouette.shape == (40, 40)
    assert silhouette.dtype == bool
    assert frame is not background


# ---------------------------------------------------------------- the skeleton path end to end


def stick_figure(width: int = 96, height: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(133, 3) keypoints of a standing stick figure seen from the front, its (H, W) person mask (thick
    limbs, a torso quad and a head) and a textured reference image (random colours on the person)."""
    kp = np.zeros((133, 3), np.float32)
    points = {
        NOSE: (48, 16),
        L_SHOULDER: (60, 34),
        R_SHOULDER: (36, 34),
        L_ELBOW: (70, 52),
        R_ELBOW: (26, 52),
        L_WRIST: (74, 68),
        R_WRIST: (22, 68),
        L_HIP: (56, 70),
        R_HIP: (40, 70),
        L_KNEE: (58, 92),
        R_KNEE: (38, 92),
        L_ANKLE: (58, 112),
        R_ANKLE: (38, 112),
    }
    for index, (x, y) in points.items():
        kp[index] = (x, y, 1.0)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillConvexPoly(
        mask, np.array([points[i] for i in (L_SHOULDER, R_SHOULDER, R_HIP, L_HIP)], np.int32), 1
    )
    cv2.circle(mask, points[NOSE], 9, 1, -1)
    cv2.line(mask, (48, 24), (48, 34), 1, 8)
    for a, b in (
        (L_SHOULDER, L_ELBOW),
        (L_ELBOW, L_WRIST),
        (R_SHOULDER, R_ELBOW),
        (R_ELBOW, R_WRIST),
        (L_HIP, L_KNEE),
        (L_KNEE, L_ANKLE),
        (R_HIP, R_KNEE),
        (R_KNEE, R_ANKLE),
    ):
        cv2.line(mask, points[a], points[b], 1, 7)
    person = mask > 0
    rng = np.random.default_rng(7)
    image = np.full((height, width, 3), 128, np.uint8)
    image[person] = rng.integers(0, 256, (int(person.sum()), 3), np.uint8)
    return kp, person, image


def skeleton_bundle(kp, person, image, frames) -> GuidanceBundle:
    return GuidanceBundle(
        reference=image,
        reference_mask=person.astype(np.uint8) * 255,
        reference_keypoints=kp,
        keypoints=np.stack(frames).astype(np.float32),
        fps=24.0,
        size=(image.shape[1], image.shape[0]),
    )


def shifted(kp: np.ndarray, dx: float, dy: float) -> np.ndarray:
    out = kp.copy()
    out[:, 0] += dx
    out[:, 1] += dy
    return out


def test_skeleton_path_moves_the_whole_person_by_a_shift_of_every_keypoint():
    """Every keypoint moves by (dx, dy): every bone's map is that shift, so the person's pixels land
    exactly shifted (texture and all), and the reference's place shows the filled background."""
    kp, person, image = stick_figure()
    engine = WarpEngine()
    calls = []
    bundle = skeleton_bundle(kp, person, image, [kp, shifted(kp, 6, -4), shifted(kp, -5, 3)])
    assert not WarpEngine.uses_body(bundle)
    frames = list(engine.render(bundle, progress=lambda done, total: calls.append((done, total))))
    assert engine.motion == "skeleton" and engine.last_body_mask is None and engine.last_masks is None
    assert calls == [(1, 3), (2, 3), (3, 3)] and len(frames) == 3
    for frame, (dx, dy) in zip(frames, [(0, 0), (6, -4), (-5, 3)], strict=True):
        assert frame.shape == image.shape and frame.dtype == np.uint8
        moved = np.roll(person, (dy, dx), axis=(0, 1))
        source = np.roll(image, (dy, dx), axis=(0, 1))
        inner = cv2.erode(moved.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        assert inner.sum() > 300
        assert (frame[inner] == source[inner]).all(), (dx, dy)
        # the background there is the grey the person stood on (filled), far away exactly grey
        away = chebyshev_distance(person | moved) > 20
        assert (frame[away] == 128).all()
        left = person & ~(cv2.dilate(moved.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0)
        if left.any():
            assert np.abs(frame[left].astype(int) - 128).max() < 12  # no person left behind
    silhouette = engine.last_silhouette
    moved = np.roll(person, (3, -5), axis=(0, 1))
    assert (silhouette ^ moved).sum() < 0.03 * moved.sum()


def test_skeleton_path_person_is_the_mask_above_127_and_a_fresh_engine_has_no_masks():
    """A hat on the stick figure's head, masked at 128 (person: it moves with the figure) or 127 (not:
    nothing of it where the figure went); before any render the engine reports no masks."""
    engine = WarpEngine()
    assert engine.last_silhouette is None and engine.last_body_mask is None and engine.motion is None
    kp, person, image = stick_figure()
    hat = np.zeros(person.shape, bool)
    hat[2:6, 40:57] = True
    image[hat] = (250, 250, 0)
    moved = np.roll(hat, 10, axis=1)
    shown = []
    for value in (127, 128):
        mask = person.astype(np.uint8) * 255
        mask[hat] = value
        bundle = GuidanceBundle(
            reference=image,
            reference_mask=mask,
            reference_keypoints=kp,
            keypoints=shifted(kp, 10, 0)[None],
            fps=24.0,
            size=(image.shape[1], image.shape[0]),
        )
        frame = next(iter(WarpEngine().render(bundle)))
        yellow = (frame[..., 0] > 200) & (frame[..., 1] > 200) & (frame[..., 2] < 80)
        shown.append((yellow & moved & ~hat).sum() / (moved & ~hat).sum())
    assert shown[0] < 0.1 and shown[1] > 0.8, shown


def test_skeleton_path_stops_when_cancelled_and_reports_progress_per_frame():
    kp, person, image = stick_figure()
    bundle = skeleton_bundle(kp, person, image, [kp] * 4)
    asked = []

    def cancel() -> bool:
        asked.append(True)
        return len(asked) > 2

    calls = []
    frames = list(WarpEngine().render(bundle, lambda d, t: calls.append((d, t)), cancel))
    assert len(frames) == 2 and calls == [(1, 4), (2, 4)]
    assert len(list(WarpEngine().render(bundle, None, lambda: False))) == 4


def test_skeleton_path_extends_a_person_cut_at_the_bottom():
    """The figure cut at the thighs (the mask touches the bottom row) moves up by 12 px: the rows below
    the cut come from the repeated last row, so the legs reach the frame's bottom instead of ending 12 px
    above it over the background."""
    kp, person, image = stick_figure()
    cut = 84
    kp_cut = kp.copy()
    kp_cut[[L_KNEE, R_KNEE, L_ANKLE, R_ANKLE], 2] = 0.0
    person, image = person[:cut], image[:cut]
    bundle = skeleton_bundle(kp_cut, person, image, [shifted(kp_cut, 0, -12)])
    frame = next(iter(WarpEngine().render(bundle)))
    legs = np.flatnonzero(person[-1])
    assert len(legs) >= 0.05 * person.shape[1]
    inner = legs[2:-2] if len(legs) > 6 else legs
    # the last 12 rows show the reference's last row (the legs continue), not grey
    for row in range(cut - 10, cut):
        shown = frame[row, inner].astype(int)
        assert (np.abs(shown - image[-1, inner].astype(int)).max(1) < 20).mean() > 0.75, row


def hands_over_thighs(wrist: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints, person mask, image (torso and legs red, arms green, head skin) and the (H, W) torso
    quad of a figure whose right arm hangs down to ``wrist``."""
    width, height = 96, 128
    points = {
        NOSE: (48, 16),
        L_SHOULDER: (62, 34),
        R_SHOULDER: (34, 34),
        L_ELBOW: (70, 58),
        R_ELBOW: (22, 80),
        L_WRIST: (74, 80),
        R_WRIST: wrist,
        L_HIP: (58, 80),
        R_HIP: (38, 80),
        L_KNEE: (58, 112),
        R_KNEE: (38, 112),
    }
    kp = np.zeros((133, 3), np.float32)
    for index, (x, y) in points.items():
        kp[index] = (x, y, 1.0)
    body, quad = np.zeros((height, width), np.uint8), np.zeros((height, width), np.uint8)
    cv2.fillConvexPoly(
        quad, np.array([points[i] for i in (L_SHOULDER, R_SHOULDER, R_HIP, L_HIP)], np.int32), 1
    )
    body |= quad
    for a, b in ((L_HIP, L_KNEE), (R_HIP, R_KNEE)):
        cv2.line(body, points[a], points[b], 1, 13)
    arms = np.zeros((height, width), np.uint8)
    for a, b in ((L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST)):
        cv2.line(arms, points[a], points[b], 1, 9)
    head = np.zeros((height, width), np.uint8)
    cv2.circle(head, points[NOSE], 10, 1, -1)
    person = (body | arms | head) > 0
    image = np.full((height, width, 3), 128, np.uint8)
    image[body > 0] = (220, 40, 40)
    image[arms > 0] = (40, 220, 40)
    image[head > 0] = (230, 200, 160)
    return kp, person, image, quad > 0


def pixel_field(kp: np.ndarray, person: np.ndarray):
    from animate.motion.skeleton_field import SkeletonField

    ys, xs = np.nonzero(person)
    return SkeletonField(kp, np.stack([xs, ys], 1).astype(np.float64))


def test_hidden_torso_is_the_torso_and_thighs_with_what_the_arm_covers_filled():
    """The right forearm hangs over the right thigh (the capsule hip-knee of radius round(0.25 x 32) = 8
    belongs to the hidden layer): the layer is bound to the torso and thighs, holds the person inside the
    quad and the capsules, and its image replaces the arm-bound pixels there (and only those)."""
    from animate.motion.skeleton_field import BONES

    kp, person, image, quad = hands_over_thighs((38, 108))
    field = pixel_field(kp, person)
    hidden = WarpEngine._hidden_torso(image, field, person)
    assert hidden is not None
    hidden_field, hidden_image = hidden
    height, width = person.shape
    bound = np.zeros((height, width), bool)
    bound[hidden_field.pixels[:, 1].astype(int), hidden_field.pixels[:, 0].astype(int)] = True
    # inside the quad and on the thighs' centre lines: in; off the person, the head, the left arm: out
    assert bound[cv2.erode(quad.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0].all()
    assert bound[82:110, 36:41].all() and bound[82:110, 56:61].all()
    assert not bound[~person].any() and not bound[:26].any() and not bound[60:75, 66:80].any()
    # the capsule reaches 8 px from the thigh's line x = 38: the forearm's pixels 7 px away are in it,
    # 10 px away not
    assert person[96, 28] and bound[96, 31] and not bound[96, 28]
    names = {BONES[i].name for i in np.flatnonzero(hidden_field.weights.any(0))}
    assert names == {"torso", "l_thigh", "r_thigh"}
    # the image: the reference except where arm-bound pixels lie on the torso region
    dominant = np.full((height, width), -1)
    ys, xs = np.nonzero(person)
    dominant[ys, xs] = field.dominant
    arm_bones = [i for i, bone in enumerate(BONES) if "arm" in bone.name or "hand" in bone.name]
    on_arm = np.isin(dominant, arm_bones)
    changed = (hidden_image != image).any(-1)
    assert changed.any() and not changed[~on_arm].any()
    assert not changed[:, :28].any()  # the arm's pixels beside the capsule keep their colour
    # filled from the visible torso: redder and less green than the arm it replaces
    under = on_arm & bound
    assert under.sum() >= 50
    assert hidden_image[under][:, 0].mean() > 100 and hidden_image[under][:, 1].mean() < 180


def test_hidden_torso_fill_has_no_half_resolution_blocks():
    """The covered torso is inpainted at half resolution and brought back bilinearly: on a torso whose red
    rises 2 levels a row, rows under the arm still change from one to the next (nearest upsampling would
    repeat every row: half the steps flat)."""
    from animate.motion.skeleton_field import BONES

    kp, person, image, _ = hands_over_thighs((38, 108))
    height, width = person.shape
    arms = (image[..., 1] > 150) & (image[..., 0] < 100)
    rows = np.mgrid[0:height, 0:width][0]
    torso = person & ~arms
    image = image.copy()
    image[torso, 0] = 2 * rows[torso]
    field = pixel_field(kp, person)
    hidden_field, hidden_image = WarpEngine._hidden_torso(image, field, person)
    bound = np.zeros((height, width), bool)
    bound[hidden_field.pixels[:, 1].astype(int), hidden_field.pixels[:, 0].astype(int)] = True
    dominant = np.full((height, width), -1)
    ys, xs = np.nonzero(person)
    dominant[ys, xs] = field.dominant
    arm_bones = [i for i, bone in enumerate(BONES) if "arm" in bone.name or "hand" in bone.name]
    under = np.isin(dominant, arm_bones) & bound
    pairs = under[:-1] & under[1:]
    assert pairs.sum() > 80
    steps = hidden_image[1:, :, 0].astype(int) - hidden_image[:-1, :, 0].astype(int)
    assert np.mean(steps[pairs] == 0) < 0.25, np.mean(steps[pairs] == 0)


def test_hidden_torso_needs_an_arm_over_the_torso_region_and_a_seen_torso():
    # the forearm hangs outside the thighs: fewer than 50 arm pixels on the torso region
    kp, person, image, _ = hands_over_thighs((16, 108))
    assert WarpEngine._hidden_torso(image, pixel_field(kp, person), person) is None
    kp, person, image, _ = hands_over_thighs((38, 108))
    no_hip = kp.copy()
    no_hip[L_HIP, 2] = 0.0
    assert WarpEngine._hidden_torso(image, pixel_field(no_hip, person), person) is None


# ---------------------------------------------------------------- the body path on the Anny body (about 1 s each)


@pytest.fixture(scope="module")
def anny():
    from animate.body import load_anny

    return load_anny()


def body_scene(anny, frame_pose=None, transl=None, size=(288, 512)):
    """A BodyMotion (reference standing, one frame), the reference image (each part in its Champ colour
    on grey) and its person mask."""
    from test_motion_body_field import synthetic_motion
    from test_warp_body import reference_of

    motion = synthetic_motion(anny, {}, [frame_pose or {}], size=size, transl=transl)
    image, person = reference_of(motion)
    return motion, image, person


def test_body_reference_pose_draws_exactly_the_rendered_body_at_scale_1(anny):
    """At scale 1 the render is the output grid: the body mask is the rendered body to the pixel (the
    working box holds all of it), the silhouette covers it, and no surface needs the mesh colours."""
    from animate.engines.warp import BodyWarp

    motion, image, person = body_scene(anny)
    vertices = motion.vertices(0, 1)[0]
    frame, masks = BodyWarp(motion, image, person, scale=1, edge_sigma=0).frame(vertices)
    target = motion.renderer()[0].render(vertices, motion.camera)
    assert (masks.body == target.mask).all()
    assert masks.silhouette[target.mask].all()
    assert masks.fill.sum() < 0.01 * target.mask.sum()
    # edge_sigma 0: every body pixel is the reference's pixel (the same pose, sampled in place)
    error = np.abs(frame[target.mask].astype(int) - image[target.mask]).max(1)
    assert (error <= 2).mean() > 0.99
    # stepped left past the frame's edge: the box is clipped at column 0, not before it
    motion, image, person = body_scene(anny, transl=[(-0.62, 0.0, 2.8)])
    vertices = motion.vertices(0, 1)[0]
    frame, masks = BodyWarp(motion, image, person, scale=1, edge_sigma=0).frame(vertices)
    target = motion.renderer()[0].render(vertices, motion.camera)
    assert target.mask[:, 0].sum() > 20 and target.mask[:, 0].sum() < 0.1 * target.mask.sum()
    assert (masks.body == target.mask).all()
    assert (np.abs(frame[:, 0].astype(int) - 128).sum(1) > 12)[target.mask[:, 0]].all()


def test_body_offbody_pixels_under_another_parts_forearm_belong_to_no_part(anny):
    """Hair above the head with the 2D keypoints' left forearm lying across it: off-body pixels there are
    no part's (-1, nothing carries them); without the keypoints they are the head's."""
    from animate.engines.warp import BodyWarp

    motion, image, person = body_scene(anny)
    head = motion.reference_render.part == PART_NAMES.index("head")
    ys, xs = np.nonzero(head)
    top, centre = int(ys.min()), int(np.median(xs[ys == ys.min()]))
    hair = np.zeros_like(person)
    hair[top - 6 : top, centre - 4 : centre + 5] = True
    assert not (hair & motion.reference_render.mask).any()
    keypoints = np.zeros((133, 3), np.float32)
    keypoints[L_ELBOW] = (centre - 20, top - 3, 1.0)
    keypoints[L_WRIST] = (centre + 20, top - 3, 1.0)
    plain = BodyWarp(motion, image, person | hair, scale=1)
    assert (plain.offbody_part[hair] == PART_NAMES.index("head")).all()
    crossed = BodyWarp(motion, image, person | hair, scale=1, keypoints=keypoints)
    assert (crossed.arm_region[hair] == 1).all()
    assert (crossed.offbody_part[hair] == -1).all()


def test_body_vertex_colours_sample_the_blurred_reference_bilinearly(anny):
    """Seen vertices take the reference (blurred, sigma 1.5) at their projection, interpolated between
    pixels: on a red ramp of 3 levels a pixel, scipy's linear interpolation agrees within rounding (nearest
    sampling is off by up to 1.5 levels)."""
    from scipy import ndimage

    from animate.engines.warp import BodyWarp

    motion, _, person = body_scene(anny)
    height, width = person.shape
    rows, cols = np.mgrid[0:height, 0:width]
    left = np.nonzero(person)[1].min()
    ramp = np.zeros((height, width, 3), np.uint8)
    ramp[..., 0] = np.clip(3.0 * (cols - left), 0, 255)
    ramp[..., 1] = np.clip(0.5 * rows, 0, 255)
    ramp[..., 2] = 90
    warp = BodyWarp(motion, ramp, person, scale=1)
    seen = warp._visible(warp.uv, warp.z, warp.parts) & ~warp.unseen
    assert seen.sum() > 5000
    blurred = cv2.GaussianBlur(warp.source, (0, 0), 1.5).astype(np.float64)
    at = [warp.uv[seen, 1], warp.uv[seen, 0]]
    expected = np.stack([ndimage.map_coordinates(blurred[..., c], at, order=1) for c in range(3)], 1)
    error = np.abs(warp.colours[seen] - expected)
    assert np.percentile(error[:, 0], 99) < 0.8, np.percentile(error[:, 0], 99)
    assert error.max() < 1.0


def test_body_ring_alpha_is_the_person_eroded_by_one_pixel_each_side_blurred(anny):
    """The ring draws only where the reference is clearly the person: the person without its outermost
    pixel on every side (segmentation bleeds a pixel), blurred with sigma 1: a red 100 x 100 square on grey
    gives scipy's Gaussian of the 98 x 98 square within rounding."""
    from scipy import ndimage

    from animate.engines.warp import BodyWarp

    motion, image, _ = body_scene(anny)
    height, width = image.shape[:2]
    person = np.zeros((height, width), bool)
    person[100:200, 60:160] = True
    square = np.full((height, width, 3), 128, np.uint8)
    square[person] = (220, 30, 30)
    warp = BodyWarp(motion, square, person, scale=1)
    core = np.zeros((height, width))
    core[101:199, 61:159] = 255.0
    expected = ndimage.gaussian_filter(core, 1.0, truncate=4.0)
    assert np.abs(warp.canvas[:height, :width, 3] - expected).max() < 1.0


def test_body_ring_follows_its_part_at_scale_2_beyond_the_bodys_box(anny):
    """Hair above the head (outside the body's bounding box) and beside it, the body stepped sideways:
    at scale 2 the ring's offsets are in output pixels (twice the render's), and the working box is grown
    by the ring's reach, so all of the hair moves with the head."""
    from animate.engines.warp import BodyWarp

    motion, image, person = body_scene(anny, transl=[(0.15, 0.0, 2.8)])
    head = motion.reference_render.part == PART_NAMES.index("head")
    ys, xs = np.nonzero(head)
    hair = np.zeros(person.shape, np.uint8)
    cv2.ellipse(hair, (int(xs.mean()), int(ys.min()) + 2), (14, 12), 0, 0, 360, 1, -1)
    cv2.circle(hair, (int(xs.max()) + 2, int(np.median(ys))), 6, 1, -1)
    hair = hair.astype(bool) & ~motion.reference_render.mask
    assert ys.min() - np.nonzero(hair)[0].min() >= 8  # the hair reaches 8+ px above the body's box
    image[hair] = (220, 30, 30)
    person = person | hair
    warp = BodyWarp(motion, image, person, scale=2)
    frame, _ = warp.frame(motion.vertices(0, 1)[0])
    red = (frame[..., 0] > 150) & (frame[..., 1] < 90)
    shift = round(0.15 / 2.8 * motion.camera.fx)
    moved = np.roll(hair, shift, axis=1)
    assert red.sum() > 0.7 * hair.sum(), (red.sum(), hair.sum())
    assert (red & moved).sum() > 0.8 * red.sum(), ((red & moved).sum(), red.sum())
    top = np.nonzero(moved)[0].min()
    assert red[top : top + 4].sum() > 0.5 * moved[top : top + 4].sum()  # the hair's top moved too
    assert not (red & hair & ~moved).any()


@pytest.mark.parametrize("side", ["left", "right"])
def test_body_arm_keypoints_keep_an_arms_own_pixels(anny, side):
    """With the 2D keypoints on the reference's arms (forearm capsules), each arm still samples its own
    pixels there: only *another* part's forearm or hand is refused (its bit differs)."""
    from test_warp_body import palette_part, whole_body_keypoints

    from animate.engines.warp import BodyWarp

    motion, image, person = body_scene(anny)
    kp = whole_body_keypoints(motion)
    vertices = motion.vertices(0, 1)[0]
    frame, masks = BodyWarp(motion, image, person, scale=1, keypoints=kp).frame(vertices)
    forearm = [PART_NAMES.index(f"{side}_elbow"), PART_NAMES.index(f"{side}_wrist")]
    region = arm_regions(kp, person) & (1 if side == "left" else 2)
    own = (
        cv2.erode(np.isin(motion.reference_render.part, forearm).astype(np.uint8), np.ones((3, 3), np.uint8))
        > 0
    ) & (region > 0)
    assert own.sum() > 30
    assert np.isin(palette_part(frame[own]), forearm).mean() > 0.95
    assert masks.fill[own].mean() < 0.05


def test_engine_ray_casts_at_half_resolution_from_384_px(anny):
    """WarpEngine: outputs whose short side is 384 px or more use the render scale (2), smaller ones 1;
    the engine's masks equal a BodyWarp's at that scale."""
    from test_warp_body import whole_body_keypoints

    from animate.engines.warp import BodyWarp

    for size, scale in (((384, 512), 2), ((382, 512), 1)):
        motion, image, person = body_scene(anny, size=size)
        kp = whole_body_keypoints(motion)
        bundle = GuidanceBundle(
            reference=image,
            reference_mask=person.astype(np.uint8) * 255,
            reference_keypoints=kp,
            keypoints=np.zeros((1, 133, 3), np.float32),
            fps=24.0,
            size=size,
            body=motion,
        )
        engine = WarpEngine()
        frame = next(iter(engine.render(bundle)))
        expected, masks = BodyWarp(
            motion, image, person, scale=scale, unseen_parts=hidden_hands(kp), keypoints=kp
        ).frame(motion.vertices(0, 1)[0])
        assert (engine.last_body_mask == masks.body).all(), size
        assert (frame == expected).all(), size


def test_body_samples_the_reference_bilinearly_between_pixels(anny):
    """The body stepped sideways by half a pixel, the reference's body painted with a horizontal ramp
    (red = 4 x (column mod 60)): each body pixel shows the reference half a pixel to its left,
    4 x (column mod 60) - 2 (bilinear; a nearest sample would be off by 2)."""
    from animate.engines.warp import BodyWarp

    probe, _, _ = body_scene(anny)
    step = 0.5 * 2.8 / probe.camera.fx  # metres for half a pixel at the body's depth
    motion, image, person = body_scene(anny, transl=[(step, 0.0, 2.8)])
    columns = np.broadcast_to(np.arange(person.shape[1]), person.shape)
    ramp = 4 * (columns % 60)
    image[person, 0] = ramp[person]
    image[person, 1] = 60
    vertices = motion.vertices(0, 1)[0]
    frame, _ = BodyWarp(motion, image, person, scale=1, edge_sigma=0).frame(vertices)
    target = motion.renderer()[0].render(vertices, motion.camera)
    inside = interior_of(target.mask & person, 2) & (columns % 60 >= 2)
    assert inside.sum() > 2000
    error = frame[inside, 0].astype(float) - (ramp[inside] - 2)
    assert np.percentile(np.abs(error), 95) <= 1.0, np.percentile(np.abs(error), [50, 95])


def interior_of(mask: np.ndarray, pixels: int) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)) > 0


def test_body_with_every_part_unseen_takes_the_mean_colour_of_the_reference_body(anny):
    """No vertex is seen (every part hidden): each vertex takes the reference body's mean colour, not
    the whole picture's (mostly grey background)."""
    from animate.engines.warp import BodyWarp

    motion, image, person = body_scene(anny)
    warp = BodyWarp(motion, image, person, scale=1, unseen_parts=tuple(range(len(PART_NAMES))))
    body = motion.reference_render.mask
    expected = image[body].astype(float).mean(0)
    assert np.abs(expected - 128).max() > 20  # differs from the grey picture
    np.testing.assert_allclose(warp.colours, np.broadcast_to(expected, warp.colours.shape), atol=3)


def test_skeleton_path_shows_the_hidden_torso_where_an_arm_moved_away():
    """The right forearm hung over the right thigh; in the frame it swings out sideways: where it lay,
    the frame shows the hidden torso layer (filled from the torso and legs, red), not the arm (green)
    and not the background (grey)."""
    kp, person, image, _ = hands_over_thighs((38, 108))
    hidden = WarpEngine._hidden_torso(image, pixel_field(kp, person), person)
    assert hidden is not None
    moved = kp.copy()
    moved[R_WRIST] = (2, 86, 1.0)  # the forearm swung out about the elbow (22, 80)
    bundle = skeleton_bundle(kp, person, image, [moved])
    engine = WarpEngine()
    frame = next(iter(engine.render(bundle)))
    forearm = np.zeros(person.shape, np.uint8)
    cv2.line(forearm, (22, 80), (38, 108), 1, 5)
    thigh = np.zeros(person.shape, np.uint8)
    cv2.line(thigh, (38, 80), (38, 112), 1, 9)
    # the forearm's pixels that the field binds to the arm (those that move with it)
    from animate.motion.skeleton_field import BONES

    field = pixel_field(kp, person)
    dominant = np.full(person.shape, -1)
    ys, xs = np.nonzero(person)
    dominant[ys, xs] = field.dominant
    on_arm = np.isin(dominant, [i for i, bone in enumerate(BONES) if "arm" in bone.name])
    revealed = ((forearm & thigh) > 0) & on_arm
    revealed &= ~(
        cv2.dilate((engine.last_silhouette & (np.arange(96) < 28)[None]).astype(np.uint8), None) > 0
    )
    assert revealed.sum() > 15
    shown = frame[revealed].astype(int)
    assert (np.abs(shown - 128).sum(1) > 40).all()  # never the background
    assert shown[:, 0].mean() > 100 and shown[:, 1].mean() < 180  # the torso layer, not the arm
    assert engine.last_silhouette[revealed].all()
    # and exactly the hidden layer's own colours there (its torso and thighs did not move), sampled from
    # the second image beside the reference (the engine extends the reference past the person first)
    from animate.engines.warp import _extend_person

    _, layer_image = WarpEngine._hidden_torso(_extend_person(image, person), field, person)
    error = np.abs(shown - layer_image[revealed].astype(int)).max(1)
    assert np.median(error) <= 3, np.percentile(error, [50, 90])


def test_body_out_of_view_gives_the_background_and_empty_masks(anny):
    from animate.engines.warp import BodyWarp

    motion, image, person = body_scene(anny, transl=[(6.0, 0.0, 2.8)])
    warp = BodyWarp(motion, image, person, scale=1)
    frame, masks = warp.frame(motion.vertices(0, 1)[0])
    assert (frame == warp.background).all() and frame is not warp.background
    for mask in (masks.silhouette, masks.body, masks.fill):
        assert mask.shape == person.shape and mask.dtype == bool and not mask.any()


def test_body_soft_edge_is_a_gaussian_of_the_body_in_both_directions(anny):
    """No ring (the person is the body), the reference's own pose: alpha is the body mask blurred with
    edge_sigma, so a body pixel on the edge is the blend of its own colour and the background by that
    alpha (scipy's Gaussian as the reference), across vertical and horizontal edges alike."""
    from animate.engines.warp import BodyWarp

    motion, image, person = body_scene(anny)
    vertices = motion.vertices(0, 1)[0]
    warp = BodyWarp(motion, image, person, scale=1, edge_sigma=1.0)
    frame, _ = warp.frame(vertices)
    body = motion.renderer()[0].render(vertices, motion.camera).mask
    alpha = ndimage.gaussian_filter(body.astype(np.float64), 1.0, truncate=4.0)
    edge = body & ~(cv2.erode(body.astype(np.uint8), None) > 0)  # the body's outer pixels
    expected = warp.background[edge] * (1 - alpha[edge])[:, None] + warp.source[edge] * alpha[edge][:, None]
    error = np.abs(frame[edge].astype(float) - expected).max(1)
    assert edge.sum() > 300
    assert np.percentile(error, 90) <= 3.0, np.percentile(error, [50, 90, 100])


def test_body_background_fill_covers_the_fitted_body_beyond_the_person_mask(anny):
    """The fitted body reaches 12 px past the person mask (painted in body colours there, beyond the fill's
    own 8 px growth of the person): the background is filled over the body too, so where the body was,
    once it steps away, no body colour is left."""
    from animate.engines.warp import BodyWarp

    motion, image, person = body_scene(anny, transl=[(0.6, 0.0, 2.8)])
    narrow = cv2.erode(person.astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
    warp = BodyWarp(motion, image, narrow, scale=1)
    frame, masks = warp.frame(motion.vertices(0, 1)[0])
    rim = person & ~narrow & ~(cv2.dilate(masks.silhouette.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0)
    assert rim.sum() > 200
    assert np.percentile(np.abs(frame[rim].astype(int) - 128).max(1), 95) < 12


def test_body_ring_reach_is_capped_at_a_tenth_of_the_bodys_height(anny):
    """A huge hair bun: the ring reaches no further than 0.1 of the reference body's height in pixels
    (not of the picture's)."""
    from animate.engines.warp import BodyWarp

    motion, image, person = body_scene(anny)
    body = motion.reference_render.mask
    rows = np.nonzero(body)[0]
    head_y, head_x = np.nonzero(motion.reference_render.part == PART_NAMES.index("head"))
    bun = np.zeros(person.shape, np.uint8)
    cv2.circle(bun, (int(head_x.mean()), int(head_y.min())), 90, 1, -1)
    bun = (bun > 0) & ~body
    image[bun] = (30, 30, 220)
    warp = BodyWarp(motion, image, person | bun, scale=1)
    tall = float(rows.max() - rows.min())
    assert tall < 0.9 * person.shape[0]
    assert warp.reach == pytest.approx(0.1 * tall)


def test_engine_person_is_the_mask_above_127(anny):
    """The reference mask is thresholded at > 127: hair at 128 is the person (the ring carries it along
    with the stepping head), hair at 127 is not (nothing red where the head went; the fill removes it
    from its old place either way, being within 8 px of the body)."""
    from test_warp_body import whole_body_keypoints

    motion, image, person = body_scene(anny, transl=[(0.15, 0.0, 2.8)])
    head_y, head_x = np.nonzero(motion.reference_render.part == PART_NAMES.index("head"))
    hair = np.zeros(person.shape, np.uint8)
    cv2.circle(hair, (int(head_x.max()) + 2, int(np.median(head_y))), 6, 1, -1)
    hair = (hair > 0) & ~motion.reference_render.mask
    image[hair] = (220, 30, 30)
    shift = round(0.15 / 2.8 * motion.camera.fx)
    moved = np.roll(hair, shift, axis=1)
    carried = []
    for value in (127, 128):
        mask = person.astype(np.uint8) * 255
        mask[hair] = value
        bundle = GuidanceBundle(
            reference=image,
            reference_mask=mask,
            reference_keypoints=whole_body_keypoints(motion),
            keypoints=np.zeros((1, 133, 3), np.float32),
            fps=24.0,
            size=(288, 512),
            body=motion,
        )
        frame = next(iter(WarpEngine().render(bundle)))
        red = (frame[..., 0] > 150) & (frame[..., 1] < 90)
        carried.append((red & moved).sum() / moved.sum())
    assert carried[0] < 0.05 and carried[1] > 0.5, carried
