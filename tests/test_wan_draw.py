"""Wan2.2-Animate's pose drawing (``animate.pose.draw_wan``) checked pixel by pixel against the facts of
../shared/research/WAN_ANIMATE.md section 2, written out here by hand: limb and joint colours, the 0.6 factor,
stroke widths per canvas size, hand edges and joints, the 0.5 gate, no face points."""

from __future__ import annotations

import numpy as np
import pytest

from animate.pose.draw_wan import draw_pose_wan

# The sheet's tables, copied by hand (not imported from the module under test).
LIMB_BASE = [
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85), (200, 200, 0),
]  # fmt: skip
JOINT = [*LIMB_BASE, (100, 100, 0)]
HAND_MEASURED = [
    (255, 0, 0), (255, 77, 0), (255, 153, 0), (255, 229, 0), (204, 255, 0), (128, 255, 0), (51, 255, 0),
    (0, 255, 25), (0, 255, 102), (0, 255, 179), (0, 255, 255), (0, 178, 255), (0, 102, 255), (0, 25, 255),
    (51, 0, 255), (128, 0, 255), (204, 0, 255), (255, 0, 230), (255, 0, 153), (255, 0, 77),
]  # fmt: skip
DIM = {  # base x 0.6 truncated, by hand
    0: 0, 85: 51, 170: 102, 200: 120, 255: 153,
}  # fmt: skip

# upstream's 20 points, 1280x720 design: name -> (x, y)
P20 = {
    "nose": (640, 100), "neck": (640, 180), "rsho": (560, 180), "relb": (480, 260), "rwri": (400, 340),
    "lsho": (720, 180), "lelb": (800, 260), "lwri": (880, 340), "rhip": (590, 400), "rknee": (580, 520),
    "rank": (570, 640), "lhip": (690, 400), "lknee": (700, 520), "lank": (710, 640), "reye": (620, 85),
    "leye": (660, 85), "rear": (600, 95), "lear": (680, 95), "ltoe": (740, 660), "rtoe": (540, 660),
}  # fmt: skip
ORDER = list(P20)
LIMBS = [  # sheet order, by name
    ("neck", "rsho"), ("neck", "lsho"), ("rsho", "relb"), ("relb", "rwri"), ("lsho", "lelb"), ("lelb", "lwri"),
    ("neck", "rhip"), ("rhip", "rknee"), ("rknee", "rank"), ("neck", "lhip"), ("lhip", "lknee"),
    ("lknee", "lank"), ("neck", "nose"), ("nose", "reye"), ("reye", "rear"), ("nose", "leye"),
    ("leye", "lear"), ("lank", "ltoe"), ("rank", "rtoe"),
]  # fmt: skip
# COCO-WholeBody index of each named point (the neck and toes come from pairs)
WB = {
    "nose": 0, "leye": 1, "reye": 2, "lear": 3, "rear": 4, "lsho": 5, "rsho": 6, "lelb": 7, "relb": 8,
    "lwri": 9, "rwri": 10, "lhip": 11, "rhip": 12, "lknee": 13, "rknee": 14, "lank": 15, "rank": 16,
}  # fmt: skip


def figure(width: int, height: int, score: float = 1.0) -> tuple[np.ndarray, dict]:
    """133 keypoints of the design figure scaled to the canvas, and the 20 points in canvas pixels."""
    sx, sy = width / 1280, height / 720
    pts = {k: (x * sx, y * sy) for k, (x, y) in P20.items()}
    kp = np.zeros((133, 3), np.float32)
    for name, i in WB.items():
        kp[i] = (*pts[name], score)
    kp[[17, 18]] = (*pts["ltoe"], score)
    kp[[20, 21]] = (*pts["rtoe"], score)
    kp[19] = kp[22] = (0, 0, 0)  # heels are not drawn
    return kp, pts


def centre(a, b) -> tuple[int, int]:
    return int((a[0] + b[0]) / 2), int((a[1] + b[1]) / 2)


@pytest.mark.parametrize("size", [(832, 480), (1280, 720), (1920, 1080)])
def test_every_limb_is_its_colour_times_0_6_and_every_joint_its_full_colour(size) -> None:
    width, height = size
    kp, pts = figure(width, height)
    image = draw_pose_wan(kp, width, height)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    for (a, b), base in zip(LIMBS, LIMB_BASE, strict=True):
        x, y = centre(pts[a], pts[b])
        assert tuple(image[y, x]) == tuple(DIM[c] for c in base), (a, b)
    for name, colour in zip(ORDER, JOINT, strict=True):
        x, y = pts[name]
        assert tuple(image[int(y), int(x)]) == colour, name


@pytest.mark.parametrize(("size", "half"), [((832, 480), 1), ((1280, 720), 2), ((1920, 1080), 4)])
def test_stroke_width_follows_the_canvas(size, half) -> None:
    """The horizontal neck -> right shoulder limb is 2w+1 rows thick at its centre (w = 1, 2, 4); each joint
    disc is 2w+1 pixels across."""
    width, height = size
    kp, pts = figure(width, height)
    image = draw_pose_wan(kp, width, height)
    x, y = centre(pts["neck"], pts["rsho"])
    column = np.flatnonzero(image[:, x].any(axis=1))
    rows = column[(column > y - 20) & (column < y + 20)]
    assert rows.tolist() == list(range(y - half, y + half + 1))
    # the right wrist's disc: full colour across 2w+1 pixels of its row, black beyond
    wx, wy = int(pts["rwri"][0]), int(pts["rwri"][1])
    row = image[wy, wx - half - 3 : wx + half + 4]
    coloured = [tuple(p) == (170, 255, 0) for p in row]  # the right wrist is point 4
    assert sum(coloured) == 2 * half + 1


def test_nothing_below_half_confidence() -> None:
    width, height = 1280, 720
    kp, pts = figure(width, height)
    kp[8, 2] = 0.49  # right elbow: both right-arm limbs and its joint go
    kp[16, 2] = 0.5  # right ankle exactly at the gate: drawn
    kp[6, 2], kp[5, 2] = 0.6, 0.39  # neck = mean 0.495: every limb from the neck goes
    image = draw_pose_wan(kp, width, height)
    for a, b in [("rsho", "relb"), ("relb", "rwri"), ("neck", "rhip"), ("neck", "nose"), ("neck", "lsho")]:
        x, y = centre(pts[a], pts[b])
        assert not image[y, x].any(), (a, b)
    assert not image[int(pts["relb"][1]), int(pts["relb"][0])].any()
    assert not image[int(pts["lsho"][1]), int(pts["lsho"][0])].any()  # left shoulder 0.39
    x, y = centre(pts["rknee"], pts["rank"])
    assert tuple(image[y, x]) == (0, 153, 102)  # (0, 255, 170) x 0.6
    assert tuple(image[int(pts["rank"][1]), int(pts["rank"][0])]) == (0, 170, 255)  # point 10


def test_face_points_are_never_drawn() -> None:
    kp = np.zeros((133, 3), np.float32)
    kp[23:91] = (300, 300, 1.0)
    kp[23:91, 0] += np.arange(68)
    assert not draw_pose_wan(kp, 1280, 720).any()


def _hand(wrist: tuple[int, int], step: int) -> np.ndarray:
    """21 hand points: five fingers along lattice directions (up-left, up, up-right, left, right), joints at
    multiples of ``step`` from the wrist, so each edge is an exact pixel line."""
    directions = [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0)]
    points = np.zeros((21, 3), np.float32)
    points[0] = (*wrist, 1)
    for f, (dx, dy) in enumerate(directions):
        for j in range(4):
            points[1 + 4 * f + j] = (wrist[0] + dx * step * (j + 1), wrist[1] + dy * step * (j + 1), 1)
    return points


EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
         (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]  # fmt: skip


@pytest.mark.parametrize(("size", "radius"), [((1280, 720), 1), ((1920, 1080), 2)])
def test_hand_edges_take_their_hue_and_joints_are_blue(size, radius) -> None:
    width, height = size
    kp = np.zeros((133, 3), np.float32)
    kp[91:112] = _hand((400, 500), 40)  # left hand
    kp[112:133] = _hand((1000, 500), 40)  # right hand
    image = draw_pose_wan(kp, width, height)
    for hand in (kp[91:112], kp[112:133]):
        for (a, b), colour in zip(EDGES, HAND_MEASURED, strict=True):
            x, y = (hand[a, :2] + hand[b, :2]) / 2
            assert tuple(image[int(y), int(x)]) == colour, (a, b)
        for x, y, _ in hand:
            assert tuple(image[int(y), int(x)]) == (0, 0, 255)
            # a disc of radius 1 (720p) or 2 (1080p): blue `radius` pixels to the side, not radius + 1 on
            # the side where no edge leaves (below the wrist)
        wx, wy = int(hand[0, 0]), int(hand[0, 1])
        assert tuple(image[wy + radius, wx]) == (0, 0, 255)
        assert not image[wy + radius + 1, wx].any()


def test_hand_points_below_the_gate_or_at_the_origin_are_skipped() -> None:
    kp = np.zeros((133, 3), np.float32)
    hand = _hand((400, 500), 40)
    hand[2, 2] = 0.4  # edges 1-2 and 2-3 go, joint 2 goes
    hand[17] = (0.5, 0.5, 1.0)  # int(x) = 0: not drawn (upstream's x > 0.01 test on integer pixels)
    kp[91:112] = hand
    image = draw_pose_wan(kp, 1280, 720)
    for a, b in [(1, 2), (2, 3), (0, 17), (17, 18)]:
        x, y = (hand[a, :2] + hand[b, :2]) / 2
        assert not image[int(y), int(x)].any(), (a, b)
    assert not image[int(hand[2, 1]), int(hand[2, 0])].any()
    assert not image[0, 0].any()
    x, y = (hand[0, :2] + hand[1, :2]) / 2
    assert tuple(image[int(y), int(x)]) == HAND_MEASURED[0]


def test_real_dance_frame_uses_only_the_sheets_palette_and_shows_each_seen_limb() -> None:
    """A frame of the shared dance through MediaPipe: every drawn pixel is one of the sheet's colours (20
    joints, 19 dimmed limbs, 20 hand hues, blue hand joints), and each limb whose ends score >= 0.5 shows its
    dimmed colour somewhere; nothing lies above the head points (no face landmarks drawn)."""
    from animate.media import open_video
    from animate.pose import MediaPipeEstimator

    video = open_video("../shared/data/driving/dance_musepose.mp4")
    frame = next(iter(video.frames(max_frames=1)))
    with MediaPipeEstimator(static=True, whole_body=True, segmentation=False) as estimator:
        pose = estimator.detect(frame)[0]
    height, width = frame.shape[:2]
    kp = pose.keypoints
    image = draw_pose_wan(kp, width, height)
    palette = {tuple(DIM[c] for c in base) for base in LIMB_BASE} | set(JOINT) | set(HAND_MEASURED)
    palette |= {(0, 0, 255), (0, 0, 0)}
    colours = {tuple(c) for c in np.unique(image.reshape(-1, 3), axis=0)}
    assert colours <= palette
    # the sheet's 20 points from the pairs, independently
    pairs = [(0, 0), (6, 5), (6, 6), (8, 8), (10, 10), (5, 5), (7, 7), (9, 9), (12, 12), (14, 14), (16, 16),
             (11, 11), (13, 13), (15, 15), (2, 2), (1, 1), (4, 4), (3, 3), (17, 18), (20, 21)]  # fmt: skip
    score = {name: (kp[a, 2] + kp[b, 2]) / 2 for name, (a, b) in zip(ORDER, pairs, strict=True)}
    seen = 0
    for (a, b), base in zip(LIMBS, LIMB_BASE, strict=True):
        dimmed = np.array([DIM[c] for c in base], np.uint8)
        present = bool((image == dimmed).all(axis=2).any())
        assert present == (score[a] >= 0.5 and score[b] >= 0.5), (a, b)
        seen += present
    assert seen >= 10
    head_top = min(kp[i, 1] for i in range(5) if kp[i, 2] >= 0.5)
    stroke = max(int(min(width, height) / 200) - 1, 1)
    assert not image[: max(0, int(head_top) - stroke - 1)].any()
