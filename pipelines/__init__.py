"""diffusers ``DiffusionPipeline`` subclasses on the SVD backbone, tiling / latent fusion, checkpoint loading.

Layering: imports ``controlnets``, diffusers and transformers; never ``animate`` or ``server``.
"""

from pipelines.injection import UNetInjector
from pipelines.pipeline_animation import AnimationPipeline, AnimationPipelineOutput
from pipelines.tiling import tile_indices, triangular_weights

__all__ = [
    "AnimationPipeline",
    "AnimationPipelineOutput",
    "UNetInjector",
    "tile_indices",
    "triangular_weights",
]
