"""Skeleton images in the DWPose/OpenPose convention: what MimicMotion-style pose guiders were trained on.

18-point body (COCO-17 plus a neck) with OpenPose's 17 limb colours, hands with one HSV hue per edge,
face as white dots; every colour is multiplied by the keypoint confidences. Drawn on a canvas whose short
side is 2160 px (as DWPose does) and downsampled with area averaging, which antialiases the result.
The colour tables are in DWPose's BGR canvas order, converted to RGB at the end exactly as they do.
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from animate.pose.layout import FACE, HAND_EDGES, LEFT_HAND, RIGHT_HAND, openpose18
from animate.pose.types import Pose

# OpenPose-18 limbs (1-based, as published) and the 18 colours used for limbs and joints.
LIMBS: tuple[tuple[int, int], ...] = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
    (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18),
)  # fmt: skip
COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
HAND_COLORS: tuple[tuple[float, float, float], ...] = tuple(
    colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0) for i in range(len(HAND_EDGES))
)
CANVAS_SHORT_SIDE = 2160
THRESHOLD = 0.3  # DWPose's visibility cut-off


def _scaled(color: tuple[float, ...], factor: float) -> tuple[int, int, int]:
    return tuple(int(float(c) * factor) for c in color)  # type: ignore[return-value]


def _draw_body(canvas: np.ndarray, body: np.ndarray, k: float) -> None:
    for i, (a, b) in enumerate(LIMBS):
        pa, pb = body[a - 1], body[b - 1]
        if pa[2] < THRESHOLD or pb[2] < THRESHOLD:
            continue
        mx, my = (pa[0] + pb[0]) / 2 * k, (pa[1] + pb[1]) / 2 * k
        length = math.hypot(pa[0] - pb[0], pa[1] - pb[1]) * k
        angle = math.degrees(math.atan2(pa[1] - pb[1], pa[0] - pb[0]))
        poly = cv2.ellipse2Poly((int(mx), int(my)), (int(length / 2), 4), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, poly, _scaled(COLORS[i], float(pa[2] * pb[2])))
    # DWPose dims the limbs so the joint dots stand out.
    np.multiply(canvas, 0.6, out=canvas, casting="unsafe")
    for i, (x, y, s) in enumerate(body):
        if s >= THRESHOLD:
            cv2.circle(canvas, (int(x * k), int(y * k)), 4, _scaled(COLORS[i], float(s)), thickness=-1)


def _draw_hand(canvas: np.ndarray, hand: np.ndarray, k: float) -> None:
    for i, (a, b) in enumerate(HAND_EDGES):
        pa, pb = hand[a], hand[b]
        if pa[2] < THRESHOLD or pb[2] < THRESHOLD:
            continue
        color = _scaled(HAND_COLORS[i], float(pa[2] * pb[2]) * 255.0)
        p0, p1 = (int(pa[0] * k), int(pa[1] * k)), (int(pb[0] * k), int(pb[1] * k))
        cv2.line(canvas, p0, p1, color, thickness=2)
    for x, y, s in hand:
        if s >= THRESHOLD:
            cv2.circle(canvas, (int(x * k), int(y * k)), 4, (0, 0, int(s * 255)), thickness=-1)


def _draw_face(canvas: np.ndarray, face: np.ndarray, k: float) -> None:
    for x, y, s in face:
        if s >= THRESHOLD:
            c = int(s * 255)
            cv2.circle(canvas, (int(x * k), int(y * k)), 3, (c, c, c), thickness=-1)


def draw_pose(
    pose: Pose,
    width: int,
    height: int,
    *,
    body: bool = True,
    hands: bool = True,
    face: bool = True,
    canvas_short_side: int = CANVAS_SHORT_SIDE,
) -> np.ndarray:
    """An (height, width, 3) uint8 RGB skeleton image of ``pose`` (pixel coordinates of that size).

    Stroke widths are DWPose's on a 2160 px short side canvas, so skeletons look alike at every output size.
    """
    out_k = canvas_short_side / min(width, height)
    canvas = np.zeros((round(height * out_k), round(width * out_k), 3), np.uint8)
    if pose.detected:
        # Strokes have fixed sizes in canvas pixels (as in DWPose); positions scale by out_k.
        kp = pose.keypoints
        if body:
            _draw_body(canvas, openpose18(kp), out_k)
        if hands:
            _draw_hand(canvas, kp[LEFT_HAND], out_k)
            _draw_hand(canvas, kp[RIGHT_HAND], out_k)
        if face:
            _draw_face(canvas, kp[FACE], out_k)
    small = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small[:, :, ::-1])
