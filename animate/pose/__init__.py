"""Whole-body pose: estimation, main-person tracking, gap filling, smoothing, retargeting, skeleton images.

Everything is in the COCO-WholeBody 133 layout (``layout.py``) in pixels of the frame it came from.
"""

from animate.pose.draw import draw_pose, draw_pose_mimicmotion
from animate.pose.errors import PoseError
from animate.pose.estimator import PoseEstimator
from animate.pose.extract import (
    ProgressCallback,
    SequenceOptions,
    estimate_frames,
    estimate_image,
    estimate_sequence_from_image,
    estimate_video,
    finish_sequence,
)
from animate.pose.gaps import fill_gaps
from animate.pose.mediapipe_estimator import MediaPipeEstimator
from animate.pose.retarget import RetargetOptions, global_fit, retarget
from animate.pose.smoothing import SmoothingOptions, smooth_keypoints
from animate.pose.tracking import TrackingOptions, track_main_person
from animate.pose.types import LAYOUT, SCHEMA_VERSION, Pose, PoseSequence

__all__ = [
    "LAYOUT",
    "SCHEMA_VERSION",
    "MediaPipeEstimator",
    "Pose",
    "PoseError",
    "PoseEstimator",
    "PoseSequence",
    "ProgressCallback",
    "RetargetOptions",
    "SequenceOptions",
    "SmoothingOptions",
    "TrackingOptions",
    "draw_pose",
    "draw_pose_mimicmotion",
    "estimate_frames",
    "estimate_image",
    "estimate_sequence_from_image",
    "estimate_video",
    "fill_gaps",
    "finish_sequence",
    "global_fit",
    "retarget",
    "smooth_keypoints",
    "track_main_person",
]
