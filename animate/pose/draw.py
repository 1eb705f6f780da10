"""Skeleton images in the DWPose/OpenPose convention: what MimicMotion-style pose guiders were trained on.

18-point body (COCO-17 plus a neck) with OpenPose's 17 limb colours, hands with one HSV hue per edge,
face as white dots; every colour is multiplied by the keypoint confidences. Stroke sizes are DWPose's on
its 2160 px short-side canvas; we draw at an integer multiple of the output size near that (exact area
averaging when downsampling, which antialiases) and only around the person (speed).
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


class _Canvas:
    """A supersampled region of the output: output pixel (x, y) -> canvas ((x - x0) * k, (y - y0) * k)."""

    def __init__(self, x0: int, y0: int, x1: int, y1: int, k: int, unit: float) -> None:
        self.x0, self.y0, self.k = x0, y0, k
        self.size = k * unit  # canvas pixels per DWPose canvas pixel
        self.image = np.zeros(((y1 - y0) * k, (x1 - x0) * k, 3), np.uint8)

    def at(self, x: float, y: float) -> tuple[int, int]:
        return int((x - self.x0) * self.k), int((y - self.y0) * self.k)

    def px(self, dwpose_pixels: float) -> int:
        return max(1, round(dwpose_pixels * self.size))


def _draw_body(c: _Canvas, body: np.ndarray) -> None:
    for i, (a, b) in enumerate(LIMBS):
        pa, pb = body[a - 1], body[b - 1]
        if pa[2] < THRESHOLD or pb[2] < THRESHOLD:
            continue
        centre = c.at((pa[0] + pb[0]) / 2, (pa[1] + pb[1]) / 2)
        length = math.hypot(pa[0] - pb[0], pa[1] - pb[1]) * c.k
        angle = math.degrees(math.atan2(pa[1] - pb[1], pa[0] - pb[0]))
        poly = cv2.ellipse2Poly(centre, (int(length / 2), c.px(4)), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(c.image, poly, _scaled(COLORS[i], float(pa[2] * pb[2])))
    # DWPose dims the limbs so the joint dots stand out.
    cv2.convertScaleAbs(c.image, c.image, 0.6)
    for i, (x, y, s) in enumerate(body):
        if s >= THRESHOLD:
            cv2.circle(c.image, c.at(x, y), c.px(4), _scaled(COLORS[i], float(s)), thickness=-1)


def _draw_hand(c: _Canvas, hand: np.ndarray) -> None:
    for i, (a, b) in enumerate(HAND_EDGES):
        pa, pb = hand[a], hand[b]
        if pa[2] < THRESHOLD or pb[2] < THRESHOLD:
            continue
        color = _scaled(HAND_COLORS[i], float(pa[2] * pb[2]) * 255.0)
        cv2.line(c.image, c.at(pa[0], pa[1]), c.at(pb[0], pb[1]), color, thickness=c.px(2))
    for x, y, s in hand:
        if s >= THRESHOLD:
            cv2.circle(c.image, c.at(x, y), c.px(4), (0, 0, int(s * 255)), thickness=-1)


def _draw_face(c: _Canvas, face: np.ndarray) -> None:
    for x, y, s in face:
        if s >= THRESHOLD:
            v = int(s * 255)
            cv2.circle(c.image, c.at(x, y), c.px(3), (v, v, v), thickness=-1)


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
    """An (height, width, 3) uint8 RGB skeleton image of ``pose`` (pixel coordinates of that size)."""
    out = np.zeros((height, width, 3), np.uint8)
    kp = pose.keypoints
    shown = kp[:, 2] >= THRESHOLD
    if not pose.detected or not shown.any():
        return out
    unit = min(width, height) / canvas_short_side  # output pixels per DWPose canvas pixel
    k = max(1, round(1 / unit))
    margin = math.ceil(6 * unit) + 2  # the widest stroke (a radius-4 joint dot) around the keypoints
    lo = np.floor(kp[shown, :2].min(axis=0)).astype(int) - margin
    hi = np.ceil(kp[shown, :2].max(axis=0)).astype(int) + margin
    x0, y0 = max(0, int(lo[0])), max(0, int(lo[1]))
    x1, y1 = min(width, int(hi[0])), min(height, int(hi[1]))
    if x1 <= x0 or y1 <= y0:
        return out
    canvas = _Canvas(x0, y0, x1, y1, k, unit)
    if body:
        _draw_body(canvas, openpose18(kp))
    if hands:
        _draw_hand(canvas, kp[LEFT_HAND])
        _draw_hand(canvas, kp[RIGHT_HAND])
    if face:
        _draw_face(canvas, kp[FACE])
    small = cv2.resize(canvas.image, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    out[y0:y1, x0:x1] = small[:, :, ::-1]  # DWPose's BGR canvas, handed out as RGB like they do
    return out


def _openpose18_dwpose(keypoints: np.ndarray) -> np.ndarray:
    """OpenPose-18 as DWPose's wholebody.py builds it: the neck's score is 1 when both shoulders > 0.3, else 0."""
    body = openpose18(keypoints)
    body[1, 2] = float(keypoints[5, 2] > THRESHOLD and keypoints[6, 2] > THRESHOLD)
    return body


def draw_pose_mimicmotion(pose: Pose, width: int, height: int, ref_w: int = CANVAS_SHORT_SIDE) -> np.ndarray:
    """MimicMotion's ``draw_pose(pose, H, W, ref_w=2160)`` exactly: an (height, width, 3) uint8 RGB image.

    The canvas is ``int(H * sr) x int(W * sr)`` with ``sr = ref_w / min(H, W)``; coordinates are truncated
    to canvas pixels. Body: limbs where both scores >= 0.3 (4 px half-width ellipses, colour * the two
    scores, truncated), the canvas then dimmed by 0.6 (truncated), joints with score > 0.3 (radius 4, colour
    * score). Hands: every edge and point whose canvas coordinates are >= 1, whatever the score (2 px lines
    in hue * int(s1 * s2 * 255), radius-4 dots (0, 0, int(s * 255))). Face: radius-3 grey dots int(s * 255)
    at canvas coordinates >= 1. Then ``cv2.resize`` (bilinear) to (W, H) and BGR -> RGB. Only the main
    person is drawn (upstream draws everyone DWPose found). Products of scores are float32, scaled in
    float64, as on the NumPy 1.x upstream ran with.
    """
    short = min(height, width)
    sr = ref_w / short if short != ref_w else 1
    canvas = np.zeros((int(height * sr), int(width * sr), 3), np.uint8)
    if pose.detected:
        kp = pose.keypoints.astype(np.float32)
        # upstream keeps coordinates normalised by the image size and multiplies them by the canvas size
        scale = np.array([width, height], np.float64)
        body = _openpose18_dwpose(kp)
        canvas = _mimicmotion_body(canvas, body[:, :2] / scale, body[:, 2])
        for hand in (LEFT_HAND, RIGHT_HAND):
            _mimicmotion_hand(canvas, kp[hand, :2] / scale, kp[hand, 2])
        _mimicmotion_face(canvas, kp[FACE, :2] / scale, kp[FACE, 2])
    return cv2.cvtColor(cv2.resize(canvas, (width, height)), cv2.COLOR_BGR2RGB)


def _canvas_xy(canvas: np.ndarray, points: np.ndarray) -> list[tuple[int, int]]:
    ch, cw = canvas.shape[:2]
    return [(int(x * cw), int(y * ch)) for x, y in points]


def _mimicmotion_body(canvas: np.ndarray, points: np.ndarray, scores: np.ndarray) -> np.ndarray:
    ch, cw = canvas.shape[:2]
    for i, (a, b) in enumerate(LIMBS):
        sa, sb = scores[a - 1], scores[b - 1]
        if sa < THRESHOLD or sb < THRESHOLD:
            continue
        xs = points[[a - 1, b - 1], 0] * float(cw)
        ys = points[[a - 1, b - 1], 1] * float(ch)
        length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        poly = cv2.ellipse2Poly(
            (int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), 4), int(angle), 0, 360, 1
        )
        cv2.fillConvexPoly(canvas, poly, [int(c * float(sa * sb)) for c in COLORS[i]])
    canvas = (canvas * 0.6).astype(np.uint8)
    for i, xy in enumerate(_canvas_xy(canvas, points)):
        if scores[i] > THRESHOLD:
            cv2.circle(canvas, xy, 4, [int(c * float(scores[i])) for c in COLORS[i]], thickness=-1)
    return canvas


def _mimicmotion_hand(canvas: np.ndarray, points: np.ndarray, scores: np.ndarray) -> None:
    xy = _canvas_xy(canvas, points)
    for i, (a, b) in enumerate(HAND_EDGES):
        level = int(float(scores[a] * scores[b]) * 255)
        if min(*xy[a], *xy[b]) > 0:
            color = tuple(float(c) * level for c in HAND_COLORS[i])  # cv2 rounds float colours
            cv2.line(canvas, xy[a], xy[b], color, thickness=2)
    for (x, y), s in zip(xy, scores, strict=True):
        if x > 0 and y > 0:
            cv2.circle(canvas, (x, y), 4, (0, 0, int(float(s) * 255)), thickness=-1)


def _mimicmotion_face(canvas: np.ndarray, points: np.ndarray, scores: np.ndarray) -> None:
    for (x, y), s in zip(_canvas_xy(canvas, points), scores, strict=True):
        if x > 0 and y > 0:
            v = int(float(s) * 255)
            cv2.circle(canvas, (x, y), 3, (v, v, v), thickness=-1)
