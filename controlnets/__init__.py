"""``torch.nn.Module``s that turn guidance into UNet features (diffusers ``ModelMixin`` + ``ConfigMixin``).

Layering: this package imports torch and diffusers only, never ``animate`` or ``server``.
"""

from controlnets.cmp import CMPCheckpointError, CMPFlow
from controlnets.dift import DiftFeaturizer, DiftLoadError, sample_keypoint_features
from controlnets.guidance_encoder import (
    ChampConversion,
    GuidanceEncoder,
    GuidanceFusion,
    convert_champ_state_dict,
)
from controlnets.identity_adapter import IdentityAdapter, IdentityInjector
from controlnets.motion_controlnet import MotionControlNet, MotionControlNetOutput, MotionEmbedding
from controlnets.point_adapter import PointAdapter
from controlnets.pose_guider import PoseGuider

__all__ = [
    "CMPCheckpointError",
    "CMPFlow",
    "ChampConversion",
    "DiftFeaturizer",
    "DiftLoadError",
    "GuidanceEncoder",
    "GuidanceFusion",
    "IdentityAdapter",
    "IdentityInjector",
    "MotionControlNet",
    "MotionControlNetOutput",
    "MotionEmbedding",
    "PointAdapter",
    "PoseGuider",
    "convert_champ_state_dict",
    "sample_keypoint_features",
]
