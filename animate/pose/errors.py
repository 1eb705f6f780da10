"""Pose errors a user can cause (bad input, not bugs)."""

from __future__ import annotations

from animate.errors import AnimateError


class PoseError(AnimateError):
    """No usable person in the input, an unreadable poses file, a missing pose model."""

    code = "pose_error"
