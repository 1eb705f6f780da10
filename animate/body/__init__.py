"""Parametric 3D body: models (Anny by default), fitting to poses, shape transfer, guidance rendering."""

from animate.body.camera import Camera
from animate.body.model import (
    COCO23_NAMES,
    JOINT_NAMES,
    AnnyBody,
    BodyModel,
    Posed,
    Rest,
    load_anny,
    load_body,
)
from animate.body.parts import CHAMP_PALETTE, MIRROR_PART, NUM_PARTS, PART_NAMES
from animate.body.render import RenderedFrame, Renderer
from animate.body.smpl import SMPLBody

__all__ = [
    "CHAMP_PALETTE",
    "COCO23_NAMES",
    "JOINT_NAMES",
    "MIRROR_PART",
    "NUM_PARTS",
    "PART_NAMES",
    "AnnyBody",
    "BodyModel",
    "Camera",
    "Posed",
    "RenderedFrame",
    "Renderer",
    "Rest",
    "SMPLBody",
    "load_anny",
    "load_body",
]
