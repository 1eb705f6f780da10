"""diffusers ``DiffusionPipeline`` subclasses on the SVD backbone, tiling / latent fusion, checkpoint loading.

Layering: imports ``controlnets``, diffusers and transformers; never ``animate`` or ``server``.
"""

from pipelines.checkpoints import (
    CheckpointError,
    KeyReport,
    build_pipeline,
    check_dispose,
    check_mimicmotion,
    load_champ_guidance_encoders,
    load_dispose,
    load_mimicmotion,
    read_checkpoint,
)
from pipelines.distributed import TileGroup, init_tile_group
from pipelines.injection import UNetInjector, skip_multiplicities
from pipelines.pipeline_animation import AnimationPipeline, AnimationPipelineOutput
from pipelines.tiling import tile_indices, triangular_weights

__all__ = [
    "AnimationPipeline",
    "AnimationPipelineOutput",
    "CheckpointError",
    "KeyReport",
    "TileGroup",
    "UNetInjector",
    "build_pipeline",
    "check_dispose",
    "check_mimicmotion",
    "init_tile_group",
    "load_champ_guidance_encoders",
    "load_dispose",
    "load_mimicmotion",
    "read_checkpoint",
    "skip_multiplicities",
    "tile_indices",
    "triangular_weights",
]
