"""The diffusion engine: ``pipelines.AnimationPipeline`` (SVD backbone + pose guider + body guidance).

The only module of ``animate`` that reaches into ``pipelines`` and ``controlnets`` (besides the weights
inspection). It turns a ``GuidanceBundle`` into the pipeline's inputs, reports progress per denoising step,
and honours cancellation by interrupting the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from animate.motion.bundle import GuidanceBundle
from animate.settings import Settings


@dataclass(frozen=True)
class DiffusionOptions:
    steps: int = 25
    guidance_scale: float = 2.0
    seed: int = 0
    tile_size: int = 16  # frames per UNet call, including the shared reference frame
    tile_overlap: int = 6
    decode_chunk_size: int = 8
    noise_aug_strength: float = 0.0
    fps_id: int = 7  # SVD's fps conditioning as MimicMotion uses it
    motion_bucket_id: int = 127


class DiffusionEngine:
    name = "diffusion"

    def __init__(self, pipeline, options: DiffusionOptions | None = None) -> None:
        self.pipeline = pipeline
        self.options = options or DiffusionOptions()

    @staticmethod
    def unavailable_reason(settings: Settings, require_gpu: bool = True) -> str | None:
        """Why this engine cannot run, or None. ``require_gpu`` is what ``--engine auto`` asks for."""
        from animate.weights import inspect_weights

        if not settings.weights_dir.is_dir():
            return f"the weights directory {settings.weights_dir} does not exist (see weights/README.md)"
        if not inspect_weights(settings.weights_dir).features.get("diffusion"):
            return f"no usable diffusion weights in {settings.weights_dir} (`animate weights check` says why)"
        if require_gpu:
            import torch

            if not torch.cuda.is_available():
                return "no CUDA GPU is available"
        return None

    @classmethod
    def from_settings(cls, settings: Settings, options: DiffusionOptions | None = None) -> DiffusionEngine:
        import torch

        from animate.weights import (
            CHAMP_DIR,
            CHAMP_FILES,
            CONVERTED_DIR,
            MIMICMOTION_FILE,
            SVD_DIR,
            inspect_weights,
        )
        from pipelines import AnimationPipeline, build_pipeline

        cuda = torch.cuda.is_available()
        dtype = torch.float16 if cuda else torch.float32
        root = Path(settings.weights_dir)
        features = inspect_weights(root).features
        if features.get("fast_load"):
            pipeline = AnimationPipeline.from_pretrained(root / CONVERTED_DIR, dtype=dtype)
        else:
            champ = {
                name: root / CHAMP_DIR / file
                for name, file in CHAMP_FILES.items()
                if features.get(f"guidance_{name}") and (root / CHAMP_DIR / file).is_file()
            }
            pipeline = build_pipeline(
                root / SVD_DIR, mimicmotion=root / MIMICMOTION_FILE, champ_files=champ, dtype=dtype
            )
        pipeline.to("cuda" if cuda else "cpu")
        pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline, options)

    def render(
        self,
        bundle: GuidanceBundle,
        progress: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Iterator[np.ndarray]:
        import torch
        from PIL import Image

        from animate.pose import Pose, draw_pose

        opts = self.options
        width, height = bundle.size
        pose_images = bundle.pose_images
        if pose_images is None:
            pose_images = np.stack([draw_pose(Pose(k), width, height) for k in bundle.keypoints])
        reference_pose = draw_pose(Pose(bundle.reference_keypoints), width, height)[None]
        maps = {
            name: value
            for name, value in (
                ("depth", bundle.depth),
                ("normal", bundle.normal),
                ("semantic", bundle.semantic),
            )
            if value is not None
        }
        encoders = getattr(self.pipeline, "guidance_encoders", None)
        known = set(getattr(getattr(encoders, "config", None), "guidance_types", None) or ())
        maps = {name: value for name, value in maps.items() if name in known}
        if "skeleton" in known:
            maps["skeleton"] = pose_images
        total_steps = opts.steps

        def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            if progress is not None:
                progress(step + 1, total_steps)
            if should_cancel is not None and should_cancel():
                pipe._interrupt = True
            return tensors

        device = self.pipeline._execution_device
        result = self.pipeline(
            Image.fromarray(bundle.reference),
            pose_images=pose_images,
            guidance_maps=maps or None,
            reference_pose_image=reference_pose,
            height=height,
            width=width,
            num_frames=bundle.num_frames,
            tile_size=opts.tile_size,
            tile_overlap=opts.tile_overlap,
            num_inference_steps=opts.steps,
            min_guidance_scale=opts.guidance_scale,
            max_guidance_scale=opts.guidance_scale,
            fps=opts.fps_id,
            motion_bucket_id=opts.motion_bucket_id,
            noise_aug_strength=opts.noise_aug_strength,
            decode_chunk_size=opts.decode_chunk_size,
            generator=torch.Generator(device=device).manual_seed(opts.seed),
            output_type="np",
            callback_on_step_end=on_step_end,
        )
        if should_cancel is not None and should_cancel():
            return
        frames = result.frames[0]
        for frame in frames:
            yield np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)
