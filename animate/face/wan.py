"""Face video for Wan2.2-Animate: one crop per frame around the 68 face landmarks, upstream's box rule.

Box (upstream ``get_face_bboxes``, scale 1.3): the tight box w x h of the 68 points (COCO-WholeBody 23-90,
iBUG order; ours come from MediaPipe FaceMesh) grows in area x 1.3 keeping its aspect; x grows by half the
width gain on each side, the top rises 3/4 of the height gain and the bottom drops 1/4. Clipped to the frame,
truncated to int, cropped and stretched to 512 x 512 (``cv2.INTER_LINEAR``; no aspect kept, no rotation).

A frame whose face is not seen (fewer than ``MIN_FACE_POINTS`` points scored > 0) reuses the last good box;
before any good frame, the first good one later in the clip; with none at all, a box around the head points
(nose, eyes, ears) sized from the shoulder width; failing that, the whole frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from animate.pose.layout import FACE, L_SHOULDER, R_SHOULDER

FACE_SIZE = 512
SCALE = 1.3
MIN_FACE_POINTS = 34  # half the 68 points: a face partly out of frame still counts
HEAD = (0, 1, 2, 3, 4)  # nose, eyes, ears


def face_box(
    landmarks: np.ndarray, width: int, height: int, scale: float = SCALE
) -> tuple[int, int, int, int]:
    """(68, 2) pixel landmarks -> (x0, x1, y0, y1) ints, upstream's order."""
    pts = np.asarray(landmarks, np.float64)[:, :2]
    min_x, min_y = pts.min(axis=0)
    max_x, max_y = pts.max(axis=0)
    w0, h0 = max(max_x - min_x, 1e-6), max(max_y - min_y, 1e-6)
    area = w0 * h0 * scale
    new_w, new_h = np.sqrt(area * w0 / h0), np.sqrt(area * h0 / w0)
    dw, dh = (new_w - w0) / 2, (new_h - h0) / 4
    return (
        int(max(min_x - dw, 0)),
        int(min(max_x + dw, width)),
        int(max(min_y - 3 * dh, 0)),
        int(min(max_y + dh, height)),
    )


def head_box(keypoints: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A face-sized box from the head points when no face landmark is seen: centred on the seen head points,
    a square side of 0.6 x the shoulder width (else 2.5 x the head points' spread)."""
    kp = np.asarray(keypoints, np.float64)
    head = kp[list(HEAD)]
    head = head[head[:, 2] > 0]
    if len(head) == 0:
        return None
    cx, cy = head[:, :2].mean(axis=0)
    sh = kp[[L_SHOULDER, R_SHOULDER]]
    if (sh[:, 2] > 0).all():
        side = 0.6 * float(np.linalg.norm(sh[0, :2] - sh[1, :2]))
    else:
        side = 2.5 * float(np.ptp(head[:, :2], axis=0).max()) if len(head) > 1 else 0.0
    side = max(side, 16.0)
    x0, x1 = int(max(cx - side / 2, 0)), int(min(cx + side / 2, width))
    y0, y1 = int(max(cy - side / 2, 0)), int(min(cy + side / 2, height))
    return (x0, x1, y0, y1) if x1 - x0 >= 2 and y1 - y0 >= 2 else None


def face_seen(keypoints: np.ndarray) -> bool:
    return int((np.asarray(keypoints)[FACE, 2] > 0).sum()) >= MIN_FACE_POINTS


def face_boxes(keypoints: np.ndarray, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """(N, 133, 3) keypoints in pixels of ``width`` x ``height`` frames -> one box per frame, held across
    frames without a face (see the module note)."""
    kp = np.asarray(keypoints, np.float64)
    boxes: list[tuple[int, int, int, int] | None] = []
    for frame in kp:
        box = None
        if face_seen(frame):
            face = frame[FACE]
            box = face_box(face[face[:, 2] > 0, :2], width, height)
            if box[1] - box[0] < 2 or box[3] - box[2] < 2:
                box = None
        boxes.append(box)
    good = [b for b in boxes if b is not None]
    if not good:
        fallback = next((b for b in (head_box(f, width, height) for f in kp) if b is not None), None)
        whole = (0, width, 0, height)
        return [head_box(f, width, height) or fallback or whole for f in kp]
    held: list[tuple[int, int, int, int]] = []
    last = good[0]
    for box in boxes:
        last = box if box is not None else last
        held.append(last)
    return held


def crop_face(frame: np.ndarray, box: tuple[int, int, int, int], size: int = FACE_SIZE) -> np.ndarray:
    """The box of ``frame`` stretched to ``size`` x ``size`` (bilinear)."""
    x0, x1, y0, y1 = box
    return cv2.resize(np.ascontiguousarray(frame[y0:y1, x0:x1]), (size, size), interpolation=cv2.INTER_LINEAR)
