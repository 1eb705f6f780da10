"""DWPose's annotator style (Champ's ``dwpose`` skeleton), the parts the parity test's palette check cannot
see: hand edges in their hue, 2 px thick, only between two seen points; blue hand joints of radius 4; the
neck seen only when both shoulders are; later limbs after an unseen one; a diagonal limb's length and
direction; float64 input read through float32 as DWPose stores it. Expected pixels worked out by hand."""

from __future__ import annotations

import numpy as np

from animate.pose.draw_dwpose import draw_pose_dwpose

# hand edge e: HSV(e / 20, 1, 1) x 255, as OpenCV rounds it (the same table as the Wan sheet's hands)
HAND = [
    (255, 0, 0), (255, 77, 0), (255, 153, 0), (255, 229, 0), (204, 255, 0), (128, 255, 0), (51, 255, 0),
    (0, 255, 25), (0, 255, 102), (0, 255, 179), (0, 255, 255), (0, 178, 255), (0, 102, 255), (0, 25, 255),
    (51, 0, 255), (128, 0, 255), (204, 0, 255), (255, 0, 230), (255, 0, 153), (255, 0, 77),
]  # fmt: skip
EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
         (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]  # fmt: skip
BLUE, WHITE = (0, 0, 255), (255, 255, 255)
R_SHOULDER, L_SHOULDER, R_ELBOW = 6, 5, 8  # COCO-WholeBody
ARM_DIM = (153, 102, 0)  # OpenPose limb 2 (right shoulder -> right elbow): (255, 170, 0) x 0.6
NECK_LIMB_DIM = (153, 0, 0)  # limb 0 (neck -> right shoulder): (255, 0, 0) x 0.6


def _hand(wrist=(128, 200), step=20, score=0.9) -> np.ndarray:
    """21 points: five fingers along lattice directions, joints at multiples of ``step`` from the wrist."""
    directions = [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0)]
    points = np.zeros((21, 3))
    points[0] = (*wrist, score)
    for f, (dx, dy) in enumerate(directions):
        for j in range(4):
            points[1 + 4 * f + j] = (wrist[0] + dx * step * (j + 1), wrist[1] + dy * step * (j + 1), score)
    return points


def _mid(points, a, b) -> tuple[int, int]:
    x, y = (points[a, :2] + points[b, :2]) / 2
    return int(y), int(x)


def test_hand_edges_take_their_hue_and_joints_are_blue_discs():
    for start in (91, 112):  # left hand, right hand
        kp = np.zeros((133, 3), np.float32)
        hand = _hand()
        kp[start : start + 21] = hand
        image = draw_pose_dwpose(kp, 256, 256)
        for e, (a, b) in enumerate(EDGES):
            assert tuple(image[_mid(hand, a, b)]) == HAND[e], (start, e)
        for x, y, _ in hand:
            assert tuple(image[int(y), int(x)]) == BLUE
        # radius 4 below the wrist (no edge leaves downwards), black beyond
        assert tuple(image[204, 128]) == BLUE and not image[205, 128].any()
        assert tuple(image[202, 126]) == BLUE  # filled, not a ring
        # a 2 px line: the horizontal edge 16 (wrist -> little finger) covers rows 199..201
        column = image[190:211, 148 + 6]  # between the joint discs
        assert (np.flatnonzero(column.any(axis=1)) + 190).tolist() == [199, 200, 201]


def test_an_unseen_hand_point_drops_its_edges_and_disc_only():
    kp = np.zeros((133, 3), np.float32)
    hand = _hand()
    hand[2, 2] = 0.2  # edges 1-2 and 2-3 go
    hand[16, 2] = 0.0  # the tip of finger 4: edge 15-16 goes
    kp[91:112] = hand
    image = draw_pose_dwpose(kp, 256, 256)
    for e, (a, b) in [(1, (1, 2)), (2, (2, 3)), (15, (15, 16))]:
        assert not image[_mid(hand, a, b)].any(), (a, b)
        assert not (image == HAND[e]).all(axis=-1).any(), e  # not drawn anywhere (not to (0, 0) either)
    assert not image[int(hand[2, 1]), int(hand[2, 0])].any()  # no disc at the unseen joint
    assert not image[int(hand[16, 1]), int(hand[16, 0])].any()
    assert tuple(image[_mid(hand, 3, 4)]) == HAND[3]  # the edges after them are drawn
    assert tuple(image[_mid(hand, 0, 1)]) == HAND[0]
    assert tuple(image[_mid(hand, 14, 15)]) == HAND[14]


def test_float64_input_is_read_as_dwpose_stores_it():
    """Positions go through float32 (x = 100 - 1e-7 is 100.0 there) and scores too (0.3 is 0.30000001 in
    float32, which passes "not below float32 0.3"): a face dot of radius 3 centred at x = 100."""
    kp = np.zeros((133, 3))
    kp[23] = (100 - 1e-7, 60, 0.3)  # face point 0
    kp[91:112] = _hand(score=0.3)
    image = draw_pose_dwpose(kp, 160, 256)
    assert tuple(image[60, 103]) == WHITE and not image[60, 96].any()
    assert tuple(image[60, 97]) == WHITE and not image[60, 104].any()
    hand = _hand()
    assert tuple(image[_mid(hand, 0, 1)]) == HAND[0]  # a hand at score 0.3 is drawn


def test_the_neck_needs_both_shoulders_and_later_limbs_still_come():
    kp = np.zeros((133, 3), np.float32)
    kp[R_SHOULDER] = (60, 60, 0.9)
    kp[L_SHOULDER] = (200, 60, 0.3)  # float32 0.3 is not above float32 0.3: the neck (130, 60) is unseen
    kp[R_ELBOW] = (60, 180, 0.9)
    image = draw_pose_dwpose(kp, 256, 256)
    assert not image[60, 95].any()  # no neck -> right shoulder limb
    assert not image[60, 130].any()  # no neck disc
    assert tuple(image[120, 60]) == ARM_DIM  # limb 2 after the skipped limbs 0 and 1
    kp[L_SHOULDER, 2] = 0.31
    image = draw_pose_dwpose(kp, 256, 256)
    assert tuple(image[60, 95]) == NECK_LIMB_DIM


def test_a_diagonal_limb_runs_its_whole_length_and_no_further():
    """Right shoulder (40, 40) -> right elbow (200, 200): half-length 113, half-width 4, darkened x 0.6."""
    kp = np.zeros((133, 3), np.float32)
    kp[R_SHOULDER] = (40, 40, 0.9)
    kp[R_ELBOW] = (200, 200, 0.9)
    image = draw_pose_dwpose(kp, 256, 256)
    for s in (8, 40, 80, 120, 152):
        assert tuple(image[40 + s, 40 + s]) == ARM_DIM, s
    for s in (-10, 170):
        assert not image[40 + s, 40 + s].any(), s
    assert not image[120 - 5, 120 + 5].any() and tuple(image[120 - 2, 120 + 2]) == ARM_DIM
    kp[R_ELBOW] = (200, 40, 0.9)  # the other way: horizontal
    kp[R_SHOULDER] = (40, 200, 0.9)  # x grows while y falls
    image = draw_pose_dwpose(kp, 256, 256)
    for s in (8, 80, 152):
        assert tuple(image[200 - s, 40 + s]) == ARM_DIM, s
    assert not image[120, 40 + 40].any()
