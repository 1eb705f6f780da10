"""Motion guidance: sparse keypoint motion, trajectory flow, the dense body motion field, and the bundle."""

from animate.motion.bundle import GuidanceBundle, GuidanceConventions
from animate.motion.keypoint_flow import sparse_motion, trajectory_flow, trajectory_sigma
from animate.motion.visualize import color_wheel, flow_to_color

__all__ = [
    "GuidanceBundle",
    "GuidanceConventions",
    "color_wheel",
    "flow_to_color",
    "sparse_motion",
    "trajectory_flow",
    "trajectory_sigma",
]
