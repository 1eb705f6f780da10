"""Wan2.2-Animate's pose drawing, the cases ``test_wan_draw.py`` leaves open: stroke sizes at canvas sizes
between the 480p / 720p / 1080p rows, a limb's full length and direction off the axes, the 0.5 gate at
exactly 0.5 on either end, the neck score as the exact mean of the shoulders', hand strokes at 1080p, and an
unseen hand edge that leaves the later edges alone. Expected pixels are worked out by hand from the sheet
(../shared/research/WAN_ANIMATE.md section 2)."""

from __future__ import annotations

import numpy as np
import pytest

from animate.pose.draw_wan import body20, draw_pose_wan, hand_width, stick_width

R_SHOULDER, L_SHOULDER, R_HIP, R_KNEE = 6, 5, 12, 14  # COCO-WholeBody
# limb 7 (right hip -> right knee; a shoulder would also make a neck): (0, 255, 85) x 0.6, truncated
LEG_DIM = (0, 153, 51)


@pytest.mark.parametrize(
    ("width", "height", "w", "wh"),
    [
        (320, 240, 1, 1),  # 240 // 200 - 1 = 0 -> floor 1
        (400, 600, 1, 1),  # 400 / 200 - 1 = 1
        (600, 800, 2, 1),  # 3 - 1
        (1000, 1000, 4, 2),  # 5 - 1
        (1399, 2000, 5, 2),  # 6.995 -> 6, - 1
        (2000, 1400, 6, 3),  # 7 - 1
    ],
)
def test_stroke_sizes_follow_the_short_side(width, height, w, wh):
    assert stick_width(width, height) == w
    assert hand_width(width, height) == wh


def _leg(a: tuple[float, float], b: tuple[float, float], score_a: float = 1.0, score_b: float = 1.0):
    kp = np.zeros((133, 3), np.float32)
    kp[R_HIP] = (*a, score_a)
    kp[R_KNEE] = (*b, score_b)
    return kp


def test_a_diagonal_limb_runs_its_whole_length_and_no_further():
    """Hip (100, 100) -> knee (300, 300) on 1000 x 1000 (w = 4): the limb's colour along the diagonal
    from one joint disc to the other, black one stroke beyond either end and beside it."""
    image = draw_pose_wan(_leg((100, 100), (300, 300)), 1000, 1000)
    for s in (10, 50, 100, 150, 190):  # along the limb, outside the joint discs (radius 4)
        assert tuple(image[100 + s, 100 + s]) == LEG_DIM, s
    for s in (-12, 212):  # 12 px beyond the ends along the limb's line (half-length 141 + 4 would be 145)
        assert not image[100 + s, 100 + s].any(), s
    # 8 px across the limb (perpendicular, 5.7 px in x and y): outside the half-width 4
    assert not image[200 - 6, 200 + 6].any() and not image[200 + 6, 200 - 6].any()
    assert tuple(image[200 - 2, 200 + 2]) == LEG_DIM  # 2.8 px across: inside
    # the other diagonal direction: x grows while y falls
    image = draw_pose_wan(_leg((100, 300), (300, 100)), 1000, 1000)
    for s in (10, 100, 190):
        assert tuple(image[300 - s, 100 + s]) == LEG_DIM, s
    assert not image[100 + 50, 100 + 50].any()  # not on the mirrored diagonal


def test_a_long_limb_reaches_both_joints():
    """A 600 px horizontal limb: coloured 10 px from each end (a limb of a third of its length would not
    reach), black 10 px beyond."""
    image = draw_pose_wan(_leg((100, 500), (700, 500)), 1280, 720)
    for x in (110, 300, 400, 690):
        assert tuple(image[500, x]) == LEG_DIM, x
    assert not image[500, 90].any() and not image[500, 710].any()


@pytest.mark.parametrize(("score_a", "score_b"), [(0.5, 1.0), (1.0, 0.5), (0.5, 0.5)])
def test_a_limb_with_an_end_at_exactly_half_is_drawn(score_a, score_b):
    image = draw_pose_wan(_leg((100, 500), (300, 500), score_a, score_b), 1280, 720)
    assert tuple(image[500, 200]) == LEG_DIM
    image = draw_pose_wan(_leg((100, 500), (300, 500), min(score_a, 0.4999), score_b), 1280, 720)
    assert not image[500, 200].any()


def test_the_neck_scores_the_exact_mean_of_the_shoulders():
    """0.5 and the float32 just below 0.5 average to just below 0.5 (in float32 they would round up to
    0.5): the neck is not seen, so no limb leaves it; the shoulders themselves are drawn (0.5 passes)."""
    just_below = np.nextafter(np.float32(0.5), np.float32(0))
    kp = np.zeros((133, 3), np.float32)
    kp[R_SHOULDER] = (560, 180, 0.5)
    kp[L_SHOULDER] = (720, 180, just_below)
    kp[0] = (640, 100, 1.0)  # nose: the neck -> nose limb would run from (640, 180)
    assert body20(kp)[1, 2] < 0.5  # float32 keypoints in: the mean is still exact
    assert body20(kp)[1, 0] == 640.0
    image = draw_pose_wan(kp, 1280, 720)
    assert not image[140, 640].any()  # no neck -> nose limb
    assert not image[180, 640].any()  # no neck disc
    assert tuple(image[180, 560]) == (255, 170, 0)  # the right shoulder, point 2, full colour
    kp[L_SHOULDER, 2] = 0.5
    image = draw_pose_wan(kp, 1280, 720)
    assert tuple(image[140, 640]) == (0, 0, 153)  # limb 12 (neck -> nose): (0, 0, 255) x 0.6


def _hand(wrist=(400, 500), step=40, score=1.0) -> np.ndarray:
    directions = [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0)]
    points = np.zeros((21, 3), np.float32)
    points[0] = (*wrist, score)
    for f, (dx, dy) in enumerate(directions):
        for j in range(4):
            points[1 + 4 * f + j] = (wrist[0] + dx * step * (j + 1), wrist[1] + dy * step * (j + 1), score)
    return points


def test_hand_points_at_exactly_half_are_drawn_and_an_unseen_edge_skips_only_itself():
    kp = np.zeros((133, 3), np.float32)
    hand = _hand(score=0.5)
    hand[2, 2] = 0.4  # edges 1-2 and 2-3 go
    kp[91:112] = hand
    image = draw_pose_wan(kp, 1280, 720)
    x, y = (hand[0, :2] + hand[1, :2]) / 2  # edge 0 (0-1), both ends at exactly 0.5
    assert tuple(image[int(y), int(x)]) == (255, 0, 0)
    x, y = (hand[3, :2] + hand[4, :2]) / 2  # edge 3 (3-4), after the unseen ones
    assert tuple(image[int(y), int(x)]) == (255, 229, 0)
    x, y = (hand[19, :2] + hand[20, :2]) / 2  # the last edge, 19-20: HSV 19 / 20
    assert tuple(image[int(y), int(x)]) == (255, 0, 77)
    x, y = (hand[1, :2] + hand[2, :2]) / 2
    assert not image[int(y), int(x)].any()
    assert tuple(image[500, 400]) == (0, 0, 255)  # the wrist joint at exactly 0.5
    assert not image[int(hand[2, 1]), int(hand[2, 0])].any()


def test_hand_edges_are_two_pixels_thick_at_1080p():
    """wh = 2 at 1080p: a horizontal edge covers rows y - 1 .. y + 1 (OpenCV's 2 px line), at 720p only y."""
    kp = np.zeros((133, 3), np.float32)
    kp[112:133] = _hand(wrist=(1000, 500))  # right hand; edge 16 runs right from the wrist along y = 500
    for (width, height), rows in (((1920, 1080), [499, 500, 501]), ((1280, 720), [500])):
        image = draw_pose_wan(kp, width, height)
        column = image[490:511, 1020]  # halfway along the wrist -> first knuckle of the last finger
        assert (np.flatnonzero(column.any(axis=1)) + 490).tolist() == rows, width
