"""Skeleton images in Wan2.2-Animate's style (its preprocessing's ``draw_aapose_by_meta_new``, stick width
"v2"): what the Wan-Animate transformer's pose branch was trained on.

A 20-point body is built from COCO-WholeBody 133 (upstream's ``split_pose2d_kps_to_aa``: the neck is the
shoulders' midpoint, each toe the midpoint of the big and small toe, with the scores averaged the same way).
On a black RGB canvas: each limb whose two ends score >= 0.5 is a filled ``ellipse2Poly`` polygon of half-width
w = max(min(H, W) // 200 - 1, 1) in its colour x 0.6 (truncated); then every body point scoring >= 0.5 is a disc
of radius w in full colour; then the left hand and the right hand: 20 edges as ``cv2.line`` of thickness
wh = max(w // 2, 1) in hue e / 20, joints as blue discs of radius wh, for points scoring >= 0.5 whose integer
pixel x and y are > 0.01. No face points, no hand-to-body link, no anti-aliasing; scores never change colours.
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from animate.pose.layout import HAND_EDGES, LEFT_HAND, RIGHT_HAND

THRESHOLD = 0.5
LIMB_DIM = 0.6
EPS = 0.01

# COCO-WholeBody indices averaged pairwise into upstream's 20 points: Nose, Neck, RSho, RElb, RWri, LSho,
# LElb, LWri, RHip, RKnee, RAnk, LHip, LKnee, LAnk, REye, LEye, REar, LEar, LToe, RToe.
BODY20_A = (0, 6, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3, 17, 20)
BODY20_B = (0, 5, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3, 18, 21)

# Limbs as (from, to) in the 20-point body, in upstream's drawing order.
LIMBS20: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (13, 18), (10, 19),
)  # fmt: skip

# RGB; limb i takes colour i (x 0.6), point i takes colour i.
COLORS20: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85), (200, 200, 0), (100, 100, 0),
)  # fmt: skip

HAND_JOINT = (0, 0, 255)


def body20(keypoints: np.ndarray) -> np.ndarray:
    """(133, 3) COCO-WholeBody -> (20, 3) upstream body points (x, y, score), each the mean of a pair."""
    kp = np.asarray(keypoints, np.float64)
    return (kp[list(BODY20_A)] + kp[list(BODY20_B)]) / 2


def stick_width(width: int, height: int) -> int:
    """Body limb half-width and joint radius ("v2"): 1 at 480p, 2 at 720p, 4 at 1080p."""
    return max(int(min(height, width) / 200) - 1, 1)


def hand_width(width: int, height: int) -> int:
    """Hand line thickness and joint radius: 1 at 480p and 720p, 2 at 1080p."""
    return max(stick_width(width, height) // 2, 1)


def hand_colors() -> list[tuple[float, float, float]]:
    """Edge e's colour: HSV(e / 20, 1, 1) x 255, as floats (OpenCV rounds them)."""
    n = len(HAND_EDGES)
    return [tuple(c * 255 for c in colorsys.hsv_to_rgb(e / float(n), 1.0, 1.0)) for e in range(n)]


def draw_pose_wan(keypoints: np.ndarray, width: int, height: int) -> np.ndarray:
    """(133, 3) COCO-WholeBody keypoints in pixels of a ``width`` x ``height`` canvas -> (H, W, 3) uint8 RGB."""
    canvas = np.zeros((height, width, 3), np.uint8)
    kp = np.asarray(keypoints, np.float64)
    body = body20(kp)
    w = stick_width(width, height)
    for i, (a, b) in enumerate(LIMBS20):
        if body[a, 2] < THRESHOLD or body[b, 2] < THRESHOLD:
            continue
        (x0, y0), (x1, y1) = body[a, :2], body[b, :2]
        length = ((x0 - x1) ** 2 + (y0 - y1) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        centre = (int((x0 + x1) / 2), int((y0 + y1) / 2))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), w), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * LIMB_DIM) for c in COLORS20[i]])
    for i in range(len(body)):
        if body[i, 2] >= THRESHOLD:
            cv2.circle(canvas, (int(body[i, 0]), int(body[i, 1])), w, COLORS20[i], thickness=-1)

    wh = hand_width(width, height)
    colors = hand_colors()
    for hand in (LEFT_HAND, RIGHT_HAND):
        points = kp[hand]
        for e, (a, b) in enumerate(HAND_EDGES):
            if points[a, 2] < THRESHOLD or points[b, 2] < THRESHOLD:
                continue
            p, q = (int(points[a, 0]), int(points[a, 1])), (int(points[b, 0]), int(points[b, 1]))
            if min(*p, *q) > EPS:
                cv2.line(canvas, p, q, colors[e], thickness=wh)
        for x, y, score in points:
            if score >= THRESHOLD and int(x) > EPS and int(y) > EPS:
                cv2.circle(canvas, (int(x), int(y)), wh, HAND_JOINT, thickness=-1)
    return canvas
