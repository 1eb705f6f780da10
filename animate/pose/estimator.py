"""The interface every pose estimator implements: one RGB frame in, every person found out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType

import numpy as np

from animate.pose.types import Pose


class PoseEstimator(ABC):
    """Finds people in RGB frames; ``detect`` is called on consecutive frames of one video, in order.

    Single-person estimators return at most one pose; multi-person ones return all, and the sequence
    logic (``tracking.py``) picks and follows the main person.
    """

    name: str = "estimator"
    #: True when the estimator follows one person across frames by itself (detections are not independent).
    tracks_internally: bool = False

    @abstractmethod
    def detect(self, rgb: np.ndarray) -> list[Pose]:
        """People in one (H, W, 3) uint8 RGB frame, keypoints in that frame's pixels."""

    def reset(self) -> None:  # noqa: B027 - optional hook, a no-op for stateless estimators
        """Forget the previous frames: the next ``detect`` starts a new video."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op without native resources
        """Release native resources."""

    def __enter__(self) -> PoseEstimator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
