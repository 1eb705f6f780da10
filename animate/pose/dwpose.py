"""DWPose (YOLOX-L person detector + RTMPose-style SimCC whole-body model) on onnxruntime, optional.

Used when ``weights/dwpose/yolox_l.onnx`` and ``weights/dwpose/dw-ll_ucoco_384.onnx`` exist. Multi-person:
it returns everyone, and ``tracking.py`` picks the main person. Pre- and post-processing follow DWPose's
released ONNX pipeline (letterbox 640 with grey 114 for YOLOX; 1.25x padded box, affine crop to 288x384,
ImageNet normalisation, SimCC argmax with split ratio 2 for the pose model). The models are fed RGB, as
DWPose's callers (ControlNet annotators, MimicMotion) do. Its 133 outputs already are COCO-WholeBody.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from animate.pose.errors import PoseError
from animate.pose.estimator import PoseEstimator
from animate.pose.types import Pose

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
_STD = np.array([58.395, 57.12, 57.375], np.float32)


def letterbox(rgb: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """YOLOX input: scaled to fit ``size`` (h, w), top-left aligned on grey 114; (1, 3, h, w) float32."""
    ratio = min(size[0] / rgb.shape[0], size[1] / rgb.shape[1])
    resized = cv2.resize(
        rgb, (int(rgb.shape[1] * ratio), int(rgb.shape[0] * ratio)), interpolation=cv2.INTER_LINEAR
    )
    canvas = np.full((size[0], size[1], 3), 114, np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32), ratio


def decode_yolox(
    output: np.ndarray, size: tuple[int, int], strides: tuple[int, ...] = (8, 16, 32)
) -> np.ndarray:
    """Raw YOLOX head output (N, A, 5 + C) -> boxes as centre x, y, w, h in input pixels (same shape)."""
    grids, expanded = [], []
    for stride in strides:
        hs, ws = size[0] // stride, size[1] // stride
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack((xv, yv), 2).reshape(1, -1, 2))
        expanded.append(np.full((1, hs * ws, 1), stride))
    grid, stride_arr = np.concatenate(grids, 1), np.concatenate(expanded, 1)
    out = output.astype(np.float32, copy=True)
    out[..., :2] = (out[..., :2] + grid) * stride_arr
    out[..., 2:4] = np.exp(out[..., 2:4]) * stride_arr
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression on x0, y0, x1, y1 boxes; indices kept, best first."""
    order = np.argsort(-scores)
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx0, yy0 = np.maximum(boxes[i, 0], boxes[rest, 0]), np.maximum(boxes[i, 1], boxes[rest, 1])
        xx1, yy1 = np.minimum(boxes[i, 2], boxes[rest, 2]), np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(xx1 - xx0, 0) * np.maximum(yy1 - yy0, 0)
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return keep


def person_boxes(
    predictions: np.ndarray, ratio: float, score_threshold: float = 0.3, nms_threshold: float = 0.45
) -> np.ndarray:
    """Decoded YOLOX predictions (A, 5 + C) of one image -> (P, 4) person boxes in image pixels."""
    centre, wh = predictions[:, :2], predictions[:, 2:4]
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1) / ratio
    class_scores = predictions[:, 4:5] * predictions[:, 5:]
    classes = class_scores.argmax(axis=1)
    scores = class_scores.max(axis=1)
    # DWPose: class-aware NMS at a 0.1 floor, then people (class 0) above 0.3.
    keep = []
    for c in np.unique(classes[scores > 0.1]):
        idx = np.flatnonzero((classes == c) & (scores > 0.1))
        keep += [int(idx[k]) for k in nms(boxes[idx], scores[idx], nms_threshold)]
    keep = [i for i in keep if classes[i] == 0 and scores[i] > score_threshold]
    keep.sort(key=lambda i: -scores[i])
    return boxes[keep].reshape(-1, 4)


def crop_affine(
    box: np.ndarray, input_wh: tuple[int, int], padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Centre and (w, h) scale of the pose model's crop: the box padded and widened to the input's aspect."""
    centre = (box[:2] + box[2:4]) / 2.0
    w, h = (box[2:4] - box[:2]) * padding
    aspect = input_wh[0] / input_wh[1]
    scale = np.array([w, w / aspect] if w > h * aspect else [h * aspect, h], np.float32)
    return centre.astype(np.float32), scale


def crop_person(
    rgb: np.ndarray, centre: np.ndarray, scale: np.ndarray, input_wh: tuple[int, int]
) -> np.ndarray:
    """The normalised (1, 3, h, w) pose-model input for one crop."""
    w, h = input_wh
    sx, sy = w / scale[0], h / scale[1]
    matrix = np.array([[sx, 0, w / 2 - centre[0] * sx], [0, sy, h / 2 - centre[1] * sy]], np.float32)
    crop = cv2.warpAffine(rgb, matrix, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32)
    crop = (crop - _MEAN) / _STD
    return np.ascontiguousarray(crop.transpose(2, 0, 1)[None])


def decode_simcc(
    simcc_x: np.ndarray,
    simcc_y: np.ndarray,
    centre: np.ndarray,
    scale: np.ndarray,
    input_wh: tuple[int, int],
    split_ratio: float = 2.0,
) -> np.ndarray:
    """SimCC logits (K, Wx), (K, Hy) of one crop -> (K, 3) keypoints in image pixels with scores."""
    x = simcc_x.argmax(axis=1).astype(np.float32)
    y = simcc_y.argmax(axis=1).astype(np.float32)
    score = np.minimum(simcc_x.max(axis=1), simcc_y.max(axis=1))
    xy = np.stack([x, y], axis=1) / split_ratio
    xy = xy / np.array(input_wh, np.float32) * scale + centre - scale / 2
    return np.concatenate([xy, np.clip(score, 0.0, 1.0)[:, None]], axis=1).astype(np.float32)


class DWPoseEstimator(PoseEstimator):
    """Multi-person whole-body keypoints from DWPose's two ONNX models."""

    name = "dwpose"

    def __init__(
        self, detector: str | Path, pose_model: str | Path, providers: list[str] | None = None
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise PoseError(
                "pose_model_missing", "DWPose needs onnxruntime (pip install onnxruntime)"
            ) from exc
        options = ort.SessionOptions()
        options.log_severity_level = 3
        providers = providers or ["CPUExecutionProvider"]
        self._det = ort.InferenceSession(str(detector), options, providers=providers)
        self._pose = ort.InferenceSession(str(pose_model), options, providers=providers)
        det_shape = self._det.get_inputs()[0].shape
        pose_shape = self._pose.get_inputs()[0].shape
        self.det_size = (int(det_shape[2]), int(det_shape[3]))  # (h, w)
        self.pose_wh = (int(pose_shape[3]), int(pose_shape[2]))  # (w, h)

    @staticmethod
    def files(weights_dir: str | Path) -> tuple[Path, Path]:
        root = Path(weights_dir) / "dwpose"
        return root / DETECTOR_FILE, root / POSE_FILE

    @classmethod
    def available(cls, weights_dir: str | Path) -> bool:
        return all(p.is_file() for p in cls.files(weights_dir))

    @classmethod
    def from_weights(cls, weights_dir: str | Path) -> DWPoseEstimator:
        detector, pose_model = cls.files(weights_dir)
        if not (detector.is_file() and pose_model.is_file()):
            raise PoseError(
                "pose_model_missing", f"DWPose needs {detector} and {pose_model} (see weights/README.md)"
            )
        return cls(detector, pose_model)

    def detect_people(self, rgb: np.ndarray) -> np.ndarray:
        """(P, 4) person boxes x0, y0, x1, y1 in pixels of ``rgb``, most confident first."""
        blob, ratio = letterbox(rgb, self.det_size)
        (raw,) = self._det.run(None, {self._det.get_inputs()[0].name: blob})[:1]
        return person_boxes(decode_yolox(raw, self.det_size)[0], ratio)

    def detect(self, rgb: np.ndarray) -> list[Pose]:
        poses = []
        name = self._pose.get_inputs()[0].name
        for box in self.detect_people(rgb):
            centre, scale = crop_affine(box, self.pose_wh)
            simcc_x, simcc_y = self._pose.run(None, {name: crop_person(rgb, centre, scale, self.pose_wh)})[:2]
            poses.append(Pose(decode_simcc(simcc_x[0], simcc_y[0], centre, scale, self.pose_wh)))
        return poses
