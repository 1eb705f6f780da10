"""Skeleton images in DWPose's annotator style (``ControlNet-v1-1-nightly/annotator/dwpose``): what Champ's
``dwpose`` guidance encoder was trained on (Champ ran that annotator on its normal renders).

Unlike ``draw.draw_pose`` (MimicMotion's style: strokes scaled from a 2160 px canvas, colours scaled by
confidence, BGR canvas): drawn at the map's own resolution with fixed sizes, full colours, in the annotator's
channel order. Body limbs are ellipses 4 px in half-width whose colours are then multiplied by 0.6 (the
neck -> right shoulder limb is (153, 0, 0)), joints discs of radius 4; hand edges 2 px lines with one hue
each and blue joint discs; face points white discs of radius 3. Seen, with DWPose's float32 scores compared
as under Champ's numpy 1.23: a body point at score > 0.3 (element by element, so in float64), the neck when
both shoulders are > 0.3 (in float32), a hand or face point unless its score < 0.3 (in float32); positions
go through the annotator's normalise-by-size round trip.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from animate.pose.draw import COLORS, HAND_COLORS, LIMBS
from animate.pose.layout import FACE, HAND_EDGES, LEFT_HAND, RIGHT_HAND, openpose18

STICK_HALF_WIDTH, JOINT_RADIUS, HAND_LINE, FACE_RADIUS = 4, 4, 2, 3
LIMB_DIM = 0.6  # the annotator darkens the limbs drawn before the joints
THRESHOLD = 0.3
EPS = 0.01  # the annotator's "drawn" test on integer pixels: x and y at least 1


def _pixels(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """The annotator's positions: normalised by the size in float32 (as DWPose stores them), then scaled back
    in float64."""
    xy = np.asarray(xy, np.float32)
    norm = np.stack([xy[..., 0] / np.float32(width), xy[..., 1] / np.float32(height)], -1)
    return norm.astype(np.float64) * np.array([float(width), float(height)])


def draw_pose_dwpose(keypoints: np.ndarray, width: int, height: int) -> np.ndarray:
    """(133, 3) COCO-WholeBody keypoints in pixels of a ``width`` x ``height`` map -> ``(H, W, 3)`` uint8 RGB."""
    canvas = np.zeros((height, width, 3), np.uint8)
    body = openpose18(keypoints)
    body_xy = _pixels(body[:, :2], width, height)
    scores = body[:, 2].astype(np.float32)
    body_seen = scores.astype(np.float64) > THRESHOLD
    body_seen[1] = scores[1] > np.float32(THRESHOLD)  # the neck: min of the shoulders' scores
    for i, (a, b) in enumerate(LIMBS):
        if not (body_seen[a - 1] and body_seen[b - 1]):
            continue
        (x0, y0), (x1, y1) = body_xy[a - 1], body_xy[b - 1]
        length = ((y0 - y1) ** 2 + (x0 - x1) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        centre = (int((x0 + x1) / 2), int((y0 + y1) / 2))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), STICK_HALF_WIDTH), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, COLORS[i])
    canvas = (canvas * LIMB_DIM).astype(np.uint8)
    for i in np.flatnonzero(body_seen):
        x, y = body_xy[i]
        cv2.circle(canvas, (int(x), int(y)), JOINT_RADIUS, COLORS[i], thickness=-1)

    for hand in (LEFT_HAND, RIGHT_HAND):
        points = _drawn(keypoints[hand], width, height)
        for e, (a, b) in enumerate(HAND_EDGES):
            if points[a] is not None and points[b] is not None:
                color = tuple(float(c) * 255 for c in HAND_COLORS[e])
                cv2.line(canvas, points[a], points[b], color, thickness=HAND_LINE)
        for point in points:
            if point is not None:
                cv2.circle(canvas, point, JOINT_RADIUS, (0, 0, 255), thickness=-1)
    for point in _drawn(keypoints[FACE], width, height):
        if point is not None:
            cv2.circle(canvas, point, FACE_RADIUS, (255, 255, 255), thickness=-1)
    return canvas


def _drawn(points: np.ndarray, width: int, height: int) -> list[tuple[int, int] | None]:
    """Integer pixels of the hand / face points the annotator draws (seen, and x, y > eps); else None."""
    xy = _pixels(points[:, :2], width, height)
    seen = ~(points[:, 2].astype(np.float32) < np.float32(THRESHOLD))
    out: list[tuple[int, int] | None] = []
    for (x, y), visible in zip(xy, seen, strict=True):
        px, py = int(x), int(y)
        out.append((px, py) if visible and px > EPS and py > EPS else None)
    return out
