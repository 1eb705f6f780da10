"""``torch.nn.Module``s that turn guidance into UNet features (diffusers ``ModelMixin`` + ``ConfigMixin``).

Layering: this package imports torch and diffusers only, never ``animate`` or ``server``.
"""

from controlnets.guidance_encoder import (
    ChampConversion,
    GuidanceEncoder,
    GuidanceFusion,
    convert_champ_state_dict,
)
from controlnets.pose_guider import PoseGuider

__all__ = ["ChampConversion", "GuidanceEncoder", "GuidanceFusion", "PoseGuider", "convert_champ_state_dict"]
