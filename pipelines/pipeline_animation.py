"""``AnimationPipeline``: SVD img2vid-xt backbone + pose guider + guidance encoders + DisPose's motion
ControlNet, any video length.

Reads top to bottom like diffusers' ``StableVideoDiffusionPipeline``: output dataclass, the pipeline class,
small private steps, then ``__call__`` in numbered sections. Differences from SVD:

- features from the pose guider and the guidance encoders are added after the UNet's ``conv_in`` through a
  forward hook (``pipelines.injection``: why hooks, not a UNet subclass), for the conditional half only
  (the guidance encoders' in both halves with ``guidance_cfg="both"``, Champ's way);
- the motion ControlNet (dense flow, trajectory flow, keypoint point features) runs on the UNet's own
  inputs and its residuals go into the skip connections and the mid block (hooks as well), added once or
  DisPose's way; under classifier-free guidance the negative half keeps the motion inputs (DisPose) or gets
  no residuals;
- frames are denoised in tiles fused per step (``pipelines.tiling``); with ``prepend_reference`` frame 0
  is the reference (conditioned on the reference's own pose), it is in every tile and dropped from the output;
- per-frame inputs are read, and their features encoded, one tile window at a time when the tile is
  predicted (any sliceable source: memory flat in length); ``decode_stream`` decodes chunk by chunk;
- the whole-length latents and fusion sums live on ``sequence_device`` (the host when the GPU is short): only
  each tile's window goes to the execution device;
- classifier-free guidance runs batched (one UNet call of 2B) or sequentially (two calls of B);
- an identity adapter (``controlnets.IdentityAdapter``, optional) adds the reference's face tokens to the
  spatial cross-attention (hooks), in the conditional half only;
- each rule of the published systems' own code that differs from ours is an argument (defaults: ours;
  ``pipelines.parity`` picks them per loaded checkpoint): the reference frame decoded with the video,
  tile-periodic noise, diffusers 0.27's time context, DisPose's point rules, Champ's map range and CFG.

With no guidance, ``prepend_reference=False`` and one tile covering every frame, the computation is
exactly SVD's (the oracle test compares frames).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput
from diffusers.models import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _append_dims,
    _resize_with_antialiasing,
)
from diffusers.schedulers import EulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import is_compiled_module, randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from controlnets import (
    GuidanceFusion,
    IdentityAdapter,
    IdentityInjector,
    MotionControlNet,
    PointAdapter,
    PoseGuider,
)
from controlnets.motion_controlnet import RESIDUAL_MODES
from pipelines.distributed import TileGroup
from pipelines.injection import UNetInjector
from pipelines.temporal_context import TEMPORAL_CONTEXTS, TemporalContext
from pipelines.tiling import tile_indices, triangular_weights

CFG_MODES = ("batched", "sequential")
# the range guidance maps reach the encoders in: "signed" [-1, 1] (SVD's image convention), "unit" [0, 1] (Champ)
GUIDANCE_RANGES = ("signed", "unit")
# which CFG halves get the guidance encoders' features: "cond" (as the pose guider's) or "both" (Champ)
GUIDANCE_CFG_MODES = ("cond", "both")
# reference point reading and placement: "default" (ours) or "dispose" (DisPose's, defects included; D2, D7)
POINT_RULES = ("default", "dispose")
# what the negative half of classifier-free guidance gets from the motion ControlNet: "keep" runs it on the
# negative inputs with the same flows and points (DisPose), "drop" adds no residuals there
CONTROLNET_CFG_MODES = ("keep", "drop")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# where per-frame conv_in features live between denoising steps: "none" (encoded again for every tile and
# step: memory flat in length) or "host" (each frame encoded once, kept on the CPU: faster, grows with length)
FEATURE_CACHES = ("none", "host")
GUIDER_CHUNK = 16  # frames per pose-guider / encoder call; bounds activation memory at full resolution

# Per-frame inputs: anything that slices like a ``(F, ...)`` array (``frames[a:b]``) and has ``len``: an array,
# a tensor, a list of PIL images, or a lazy frame source that makes (or reads) only the frames asked for.
# The pipeline reads them one tile window at a time, never all frames at once.
FrameInput = torch.Tensor | np.ndarray | Sequence[PIL.Image.Image]
ArrayInput = torch.Tensor | np.ndarray


@dataclass
class _MotionInputs:
    """The motion ControlNet's inputs for one tile of ``L`` frames of the internal sequence."""

    dense_flow: torch.Tensor | None  # (L, 2, H, W) pixels at the pipeline's height x width
    trajectory_flow: torch.Tensor | None  # (L, 2, H, W)
    embeddings: torch.Tensor | None  # (videos, K, E): reference features at the reference keypoints
    positions: torch.Tensor | None  # (L, K, 2) normalised (x / W, y / H)
    visible: torch.Tensor | None  # (L, K) bool
    scale: float
    mode: str  # residual mode, "once" | "dispose"
    cfg: str  # "keep" | "drop"


def _tile_frames(idx: Sequence[int], prepend_reference: bool) -> tuple[bool, int, int]:
    """(whether the tile holds the prepended reference frame, first and end input frame) of a tile's internal
    indices: the reference first (index 0), then consecutive frames (``tile_indices`` makes no others)."""
    offset = int(prepend_reference)
    has_reference = prepend_reference and idx[0] == 0
    frames = idx[1:] if has_reference else idx
    start, stop = frames[0] - offset, frames[-1] - offset + 1
    if list(frames) != list(range(start + offset, stop + offset)):
        raise ValueError(f"a tile's frames must be consecutive, got {list(idx)}")
    return has_reference, start, stop


@dataclass
class _MotionSources:
    """The motion ControlNet's per-frame inputs, read and prepared one tile at a time (``tile``)."""

    dense_flow: Any  # per-frame flows (F, H, W, 2) / (F, 2, H, W) in their own grid's pixels, sliceable
    trajectory_flow: Any
    keypoints: Any  # (F, K, 3), or None without points
    embeddings: torch.Tensor | None  # (videos, K, E)
    reference_positions: torch.Tensor | None  # (K, 2)
    reference_visible: torch.Tensor | None  # (K,)
    threshold: float
    point_rules: str
    prepend_reference: bool
    prepare_flow: Callable[[ArrayInput], torch.Tensor]  # -> (f, 2, height, width)
    size: tuple[int, int]  # (width, height)
    scale: float
    mode: str
    cfg: str

    def tile(self, idx: Sequence[int]) -> _MotionInputs:
        has_reference, start, stop = _tile_frames(idx, self.prepend_reference)

        def flow(source: Any) -> torch.Tensor | None:
            if source is None:
                return None
            value = self.prepare_flow(source[start:stop])
            return torch.cat([torch.zeros_like(value[:1]), value]) if has_reference else value

        positions = visible = None
        if self.embeddings is not None:
            size = torch.tensor(self.size, dtype=torch.float32)
            window = self.keypoints[start:stop]
            window = window if isinstance(window, torch.Tensor) else np.asarray(window)
            targets = torch.as_tensor(window, dtype=torch.float32).cpu()
            positions = targets[..., :2] / size
            dispose = self.point_rules == "dispose"
            if dispose:
                visible = targets[..., 2] > self.threshold
            else:
                visible = (targets[..., 2] >= self.threshold) & self.reference_visible
            if has_reference:
                positions = torch.cat([self.reference_positions[None], positions])
                visible = torch.cat([self.reference_visible[None], visible])
            if dispose:  # clamped into the last cell; points left of or above the image stay out
                positions = positions.clamp(max=1.0)
        return _MotionInputs(
            dense_flow=flow(self.dense_flow),
            trajectory_flow=flow(self.trajectory_flow),
            embeddings=self.embeddings,
            positions=positions,
            visible=visible,
            scale=self.scale,
            mode=self.mode,
            cfg=self.cfg,
        )


class _TileFeatures:
    """The conv_in features of one tile (the pose guider's and the guidance encoders'), encoded from the
    tile's own frames of the inputs when the tile is predicted.

    ``cache="none"``: encoded again for every tile and step, only one tile's frames and features exist at a
    time; ``"host"``: each frame is encoded once, at the first tile that holds it, and its features kept on
    the CPU for later tiles and steps. The reference frame's features are encoded once. Every module works
    frame by frame, so a frame's features do not depend on the tile it was encoded in.
    """

    def __init__(
        self,
        encode: Callable[[int, int], tuple[torch.Tensor | None, torch.Tensor | None]],
        reference: tuple[torch.Tensor | None, torch.Tensor | None],
        num_frames: int,
        prepend_reference: bool,
        guidance_cfg: str,
        cache: str,
        device: torch.device,
    ) -> None:
        self.encode = encode  # (start, stop) -> (pose, maps) features of those input frames, or None each
        self.reference = reference  # the prepended reference frame's (pose, maps), None: zeros
        self.num_frames = num_frames
        self.prepend_reference = prepend_reference
        self.guidance_cfg = guidance_cfg
        self.cache = cache
        self.device = device
        self._host: list[torch.Tensor | None] | None = None  # per part (pose, maps): (F, C, h, w) on the CPU
        self._done = np.zeros(num_frames, dtype=bool)

    def _frames(self, start: int, stop: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.cache == "none":
            return self.encode(start, stop)
        missing = np.flatnonzero(~self._done[start:stop]) + start
        runs = np.split(missing, np.flatnonzero(np.diff(missing) != 1) + 1) if len(missing) else ()
        for run in runs:
            first, last = int(run[0]), int(run[-1]) + 1
            parts = self.encode(first, last)
            if self._host is None:
                self._host = [
                    None if part is None else part.new_empty((self.num_frames, *part.shape[1:]), device="cpu")
                    for part in parts
                ]
            for store, part in zip(self._host, parts, strict=True):
                if store is not None:
                    store[first:last] = part.to("cpu")
            self._done[first:last] = True
        if self._host is None:
            return None, None
        return tuple(
            None if store is None else store[start:stop].to(self.device, non_blocking=True)
            for store in self._host
        )

    def tile(self, idx: Sequence[int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(features for the conditional half, features for both halves) of the tile ``idx``."""
        has_reference, start, stop = _tile_frames(idx, self.prepend_reference)
        parts = list(self._frames(start, stop))
        if has_reference:
            for k, (part, ref) in enumerate(zip(parts, self.reference, strict=True)):
                if part is not None:
                    ref = torch.zeros_like(part[:1]) if ref is None else ref.to(part.dtype)
                    parts[k] = torch.cat([ref, part])
        pose, maps = parts
        if self.guidance_cfg == "cond" and maps is not None:
            return (maps if pose is None else pose + maps), None
        return pose, maps


def _all_reduce_sums(
    group: TileGroup, device: torch.device, chunk: int, noise_pred: torch.Tensor, weight_sum: torch.Tensor
) -> None:
    """Sum the fusion sums over the ranks, in place. NCCL reduces only CUDA tensors: sums kept on the host
    go through the execution device ``chunk`` frames at a time (never the whole length there at once)."""
    if group.backend != "nccl" or noise_pred.device.type == "cuda":
        group.all_reduce(noise_pred, weight_sum)
        return
    for start in range(0, noise_pred.shape[1], chunk):
        part = noise_pred[:, start : start + chunk].to(device)
        group.all_reduce(part)
        noise_pred[:, start : start + chunk] = part.to(noise_pred.device)
    weights = weight_sum.to(device)
    group.all_reduce(weights)
    weight_sum.copy_(weights.to(weight_sum.device))


@dataclass
class AnimationPipelineOutput(BaseOutput):
    """``frames``: per video a list of PIL images, or an array / tensor ``(batch, frames, ...)``; for
    ``output_type="latent"`` the latents ``(batch, frames, 4, h, w)``."""

    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor


class AnimationPipeline(DiffusionPipeline):
    r"""Animate a reference image with pose images and body-render guidance maps on an SVD backbone.

    Args:
        vae: ``AutoencoderKLTemporalDecoder``. image_encoder: CLIP vision model with projection.
        unet: diffusers' ``UNetSpatioTemporalConditionModel`` (SVD-xt, or MimicMotion's fine-tune).
        scheduler: ``EulerDiscreteScheduler`` (v-prediction, Karras sigmas).
        feature_extractor: ``CLIPImageProcessor``.
        pose_guider: ``controlnets.PoseGuider`` (optional). guidance_encoders: ``controlnets.GuidanceFusion``
        (optional). motion_controlnet: ``controlnets.MotionControlNet`` (optional; DisPose's, with its point
        adapter). identity_adapter: ``controlnets.IdentityAdapter`` (optional; face tokens, ``face_embedding``).
    """

    model_cpu_offload_seq = "image_encoder->pose_guider->guidance_encoders->motion_controlnet->unet->vae"
    _optional_components: ClassVar[list[str]] = [
        "pose_guider",
        "guidance_encoders",
        "motion_controlnet",
        "identity_adapter",
    ]
    # the identity adapter runs inside the UNet's hooks (never through its own forward), so CPU offload
    # cannot move it: __call__ puts it on the execution device
    _exclude_from_cpu_offload: ClassVar[list[str]] = ["identity_adapter"]
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents", "noise_pred"]

    def __init__(
        self,
        vae: AutoencoderKLTemporalDecoder,
        image_encoder: CLIPVisionModelWithProjection,
        unet: UNetSpatioTemporalConditionModel,
        scheduler: EulerDiscreteScheduler,
        feature_extractor: CLIPImageProcessor,
        pose_guider: PoseGuider | None = None,
        guidance_encoders: GuidanceFusion | None = None,
        motion_controlnet: MotionControlNet | None = None,
        identity_adapter: IdentityAdapter | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            image_encoder=image_encoder,
            unet=unet,
            scheduler=scheduler,
            feature_extractor=feature_extractor,
            pose_guider=pose_guider,
            guidance_encoders=guidance_encoders,
            motion_controlnet=motion_controlnet,
            identity_adapter=identity_adapter,
        )
        # `is not None`: a compiled VAE (torch.compile's OptimizedModule) raises on the truth test (`len()`)
        self.vae_scale_factor = (
            2 ** (len(self.vae.config.block_out_channels) - 1)
            if getattr(self, "vae", None) is not None
            else 8
        )
        self.video_processor = VideoProcessor(do_resize=True, vae_scale_factor=self.vae_scale_factor)
        self.unit_processor = VideoProcessor(
            do_resize=True, vae_scale_factor=self.vae_scale_factor, do_normalize=False
        )

    def _encode_image(
        self, image: PipelineImageInput, device: torch.device, num_videos_per_prompt: int, do_cfg: bool
    ) -> torch.Tensor:
        """CLIP image embedding, one token per video; the unconditional half is zeros (as SVD)."""
        dtype = next(self.image_encoder.parameters()).dtype
        if not isinstance(image, torch.Tensor):
            pixels = self.video_processor.numpy_to_pt(self.video_processor.pil_to_numpy(image))
            # SVD resizes to CLIP's input size (224) in [-1, 1] with antialiasing, then hands [0, 1] to the
            # CLIP normaliser; the size is read from the encoder's config so tiny test encoders work too.
            side = int(getattr(self.image_encoder.config, "image_size", 224))
            pixels = (_resize_with_antialiasing(pixels * 2.0 - 1.0, (side, side)) + 1.0) / 2.0
        else:
            pixels = image
        pixels = self.feature_extractor(
            images=pixels,
            do_normalize=True,
            do_center_crop=False,
            do_resize=False,
            do_rescale=False,
            return_tensors="pt",
        ).pixel_values
        embeddings = self.image_encoder(pixels.to(device=device, dtype=dtype)).image_embeds.unsqueeze(1)
        embeddings = embeddings.repeat_interleave(num_videos_per_prompt, dim=0)
        if do_cfg:
            embeddings = torch.cat([torch.zeros_like(embeddings), embeddings])
        return embeddings

    def _identity_tokens(
        self,
        face_embedding: torch.Tensor | np.ndarray | None,
        identity_scale: float,
        batch_size: int,
        num_videos_per_prompt: int,
        device: torch.device,
    ) -> torch.Tensor | None:
        """The identity adapter's tokens, one row per video ``(B * num_videos_per_prompt, N, D)``; None when
        there is no adapter, no embedding or ``identity_scale == 0``."""
        adapter = getattr(self, "identity_adapter", None)
        if adapter is None or face_embedding is None or identity_scale == 0:
            return None
        embedding = torch.as_tensor(
            np.asarray(face_embedding) if not isinstance(face_embedding, torch.Tensor) else face_embedding
        )
        embedding = embedding.reshape(1, -1) if embedding.ndim == 1 else embedding
        if embedding.ndim != 2 or len(embedding) not in (1, batch_size):
            raise ValueError(
                f"face_embedding must be (E,) or (1 or {batch_size}, E), got {tuple(embedding.shape)}"
            )
        adapter.to(device)
        embedding = embedding.expand(batch_size, -1).repeat_interleave(num_videos_per_prompt, 0)
        return adapter.tokens(embedding.to(device))

    def _encode_vae_image(
        self, image: torch.Tensor, device: torch.device, num_videos_per_prompt: int, do_cfg: bool
    ) -> torch.Tensor:
        """Reference latent (``latent_dist.mode()``, unscaled, as SVD), ``(B, 1, 4, h, w)``; zeros when
        unconditional."""
        image = image.to(device=device, dtype=self.vae.dtype)
        latents = self.vae.encode(image).latent_dist.mode()
        latents = latents.repeat(num_videos_per_prompt, 1, 1, 1)
        if do_cfg:
            latents = torch.cat([torch.zeros_like(latents), latents])
        return latents.unsqueeze(1)

    def _get_add_time_ids(
        self,
        fps: int,
        motion_bucket_id: int,
        noise_aug_strength: float,
        dtype: torch.dtype,
        batch: int,
        do_cfg: bool,
    ) -> torch.Tensor:
        time_ids = [fps, motion_bucket_id, noise_aug_strength]
        expected = self.unet.add_embedding.linear_1.in_features
        if self.unet.config.addition_time_embed_dim * len(time_ids) != expected:
            raise ValueError(
                f"the UNet expects {expected} added time features; its config does not fit SVD's 3 ids"
            )
        time_ids = torch.tensor([time_ids], dtype=dtype).repeat(batch, 1)
        return torch.cat([time_ids, time_ids]) if do_cfg else time_ids

    def _prepare_condition_frames(
        self,
        frames: FrameInput,
        height: int,
        width: int,
        device: torch.device,
        dtype: torch.dtype,
        unit: bool = False,
    ) -> torch.Tensor:
        """Pose images / guidance maps -> ``(F, 3, height, width)`` in ``[-1, 1]`` (``unit``: ``[0, 1]``,
        uint8 / 255 as Champ).

        Accepts a list of PIL images, a uint8 or [0, 1] float array ``(F, H, W, 3)``, or a tensor
        ``(F, 3, H, W)`` in ``[0, 1]`` (diffusers' convention; a tensor already in ``[-1, 1]`` is kept).
        """
        if isinstance(frames, np.ndarray) and frames.dtype == np.uint8:
            frames = frames.astype(np.float32) / 255.0
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = frames[None]
        if isinstance(frames, torch.Tensor) and frames.ndim == 3:
            frames = frames[None]
        if isinstance(frames, PIL.Image.Image):
            frames = [frames]
        processor = self.unit_processor if unit else self.video_processor
        pixels = processor.preprocess(frames, height=height, width=width)
        return pixels.to(device=device, dtype=dtype)

    def _run_chunked(self, module: torch.nn.Module, pixels: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.cat(
            [module(pixels[i : i + GUIDER_CHUNK], **kwargs) for i in range(0, len(pixels), GUIDER_CHUNK)]
        )

    def _fused_chunked(
        self, maps: Mapping[str, torch.Tensor], scales: Mapping[str, float]
    ) -> torch.Tensor | None:
        length = len(next(iter(maps.values())))
        parts = []
        for start in range(0, length, GUIDER_CHUNK):
            part = self.guidance_encoders(
                {k: v[start : start + GUIDER_CHUNK] for k, v in maps.items()}, scales
            )
            if part is None:
                return None
            parts.append(part)
        return torch.cat(parts)

    def _guidance_features(
        self,
        pose_images: FrameInput | None,
        guidance_maps: Mapping[str, FrameInput] | None,
        reference_pose_image: FrameInput | None,
        reference_guidance_maps: Mapping[str, FrameInput] | None,
        scales: Mapping[str, float],
        num_frames: int,
        prepend_reference: bool,
        height: int,
        width: int,
        device: torch.device,
        guidance_range: str = "signed",
        guidance_cfg: str = "cond",
        feature_cache: str = "none",
    ) -> _TileFeatures | None:
        """The pose guider's and the guidance encoders' conv_in features, encoded per tile (``_TileFeatures``);
        ``None`` when nothing contributes. The reference frame gets its own pose / maps, else zeros."""
        dtype = self.unet.dtype
        scale = scales.get("pose", 1.0)
        uses_pose = self.pose_guider is not None and scale != 0 and pose_images is not None
        uses_maps = bool(guidance_maps) and self.guidance_encoders is not None
        if not (uses_pose or uses_maps):
            return None
        unit = guidance_range == "unit"

        def pose_pixels(frames: FrameInput) -> torch.Tensor:
            return self._prepare_condition_frames(frames, height, width, device, self.pose_guider.dtype)

        def map_pixels(frames: FrameInput) -> torch.Tensor:
            enc_dtype = self.guidance_encoders.dtype
            return self._prepare_condition_frames(frames, height, width, device, enc_dtype, unit)

        def encode(start: int, stop: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            pose = maps = None
            if uses_pose:
                pose = (self._run_chunked(self.pose_guider, pose_pixels(pose_images[start:stop])) * scale).to(
                    dtype
                )
            if uses_maps:
                window = {k: map_pixels(v[start:stop]) for k, v in guidance_maps.items()}
                maps = self._fused_chunked(window, scales)
                maps = None if maps is None else maps.to(dtype)
            return pose, maps

        ref_pose = ref_maps = None
        if uses_pose and reference_pose_image is not None and prepend_reference:
            ref_pose = (self.pose_guider(pose_pixels(reference_pose_image)[:1]) * scale).to(dtype)
        if uses_maps and reference_guidance_maps and prepend_reference:
            ref_maps = self.guidance_encoders(
                {k: map_pixels(v)[:1] for k, v in reference_guidance_maps.items()}, scales
            )
            ref_maps = None if ref_maps is None else ref_maps.to(dtype)
        return _TileFeatures(
            encode, (ref_pose, ref_maps), num_frames, prepend_reference, guidance_cfg, feature_cache, device
        )

    @staticmethod
    def _prepare_flow(flow: ArrayInput, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """A flow ``(F, H', W', 2)`` (the ``GuidanceBundle`` layout) or ``(F, 2, H', W')`` in pixels of its own
        grid -> ``(F, 2, height, width)`` in pixels of the output: resized bilinearly and its vectors scaled
        by the size ratio when the grids differ. Stays on the device it came on (numpy: the CPU)."""
        flow = torch.as_tensor(flow)
        if flow.ndim != 4 or 2 not in (flow.shape[1], flow.shape[-1]):
            raise ValueError(f"a flow must be (F, H, W, 2) or (F, 2, H, W), got {tuple(flow.shape)}")
        if flow.shape[-1] == 2 and flow.shape[1] != 2:
            flow = flow.permute(0, 3, 1, 2)
        flow = flow.float()
        grid_h, grid_w = flow.shape[-2:]
        if (grid_h, grid_w) != (height, width):
            flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
            ratio = torch.tensor([width / grid_w, height / grid_h], device=flow.device).view(1, 2, 1, 1)
            flow = flow * ratio
        return flow.to(dtype).contiguous()

    def _prepare_motion(
        self,
        dense_flow: ArrayInput | None,
        trajectory_flow: ArrayInput | None,
        point_features: torch.Tensor | None,
        keypoints: ArrayInput | None,
        reference_keypoints: ArrayInput | None,
        keypoint_threshold: float,
        scale: float,
        residual_mode: str | None,
        controlnet_cfg: str,
        prepend_reference: bool,
        batch_size: int,
        num_videos_per_prompt: int,
        height: int,
        width: int,
        device: torch.device,
        point_rules: str = "default",
    ) -> _MotionSources | None:
        """The ControlNet's inputs, prepared per tile by ``_MotionSources.tile`` (the prepended reference frame
        gets zero flows and the reference keypoints); ``None`` when there is no ControlNet, no motion input or
        scale 0.

        Points, ``point_rules="default"``: a keypoint is placed where it and the reference's reach the
        threshold and it lies inside the image; its embedding is a bilinear sample of the features.
        ``"dispose"`` (DisPose's ``pipeline_ctrl.py`` and ``point_adapter.py``, defects included): seen means
        score > threshold; embeddings are ``PointAdapter.read_reference_cells`` (D2), zero where the reference
        does not see the point; a point seen in its frame is placed even when the reference does not see it
        (zero embedding), and one beyond the right or bottom edge lands in the last cell (D7)."""
        uses_points = point_features is not None
        if self.motion_controlnet is None or scale == 0:
            return None
        if dense_flow is None and trajectory_flow is None and not uses_points:
            return None
        dtype = self.motion_controlnet.dtype

        embeddings = ref_positions = ref_visible = None
        if uses_points:
            size = torch.tensor([width, height], dtype=torch.float32)
            reference = torch.as_tensor(reference_keypoints, dtype=torch.float32).cpu()
            dispose = point_rules == "dispose"
            ref_positions = reference[:, :2] / size
            ref_visible = (
                reference[:, 2] > keypoint_threshold if dispose else reference[:, 2] >= keypoint_threshold
            )
            features = point_features.to(device=device, dtype=torch.float32)
            if features.ndim == 3:
                features = features[None]
            if dispose:
                embeddings = (
                    PointAdapter.read_reference_cells(features, ref_positions.to(device), (height, width))
                    * ref_visible.to(device)[None, :, None]
                )
            else:
                embeddings = PointAdapter.sample_reference(features, ref_positions.to(device))
            if embeddings.shape[0] == 1 and batch_size > 1:
                embeddings = embeddings.expand(batch_size, -1, -1)
            embeddings = embeddings.repeat_interleave(num_videos_per_prompt, dim=0).to(dtype)
        return _MotionSources(
            dense_flow=dense_flow,
            trajectory_flow=trajectory_flow,
            keypoints=keypoints if uses_points else None,
            embeddings=embeddings,
            reference_positions=ref_positions,
            reference_visible=ref_visible,
            threshold=keypoint_threshold,
            point_rules=point_rules,
            prepend_reference=prepend_reference,
            prepare_flow=lambda flow: self._prepare_flow(flow, height, width, dtype),
            size=(width, height),
            scale=float(scale),
            mode=residual_mode or self.motion_controlnet.config.residual_mode,
            cfg=controlnet_cfg,
        )

    def _motion_residuals(
        self,
        sample: torch.Tensor,
        t: torch.Tensor,
        image_embeddings: torch.Tensor,
        added_time_ids: torch.Tensor,
        motion: _MotionInputs,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The ControlNet's residuals for one UNet call on ``sample`` ``(b, n, 8, h, w)``; every video row
        gets the tile's flows and points (the negative half of a batched CFG call too)."""
        batch, frames = sample.shape[:2]
        device, dtype = sample.device, self.motion_controlnet.dtype

        def per_row(value: torch.Tensor | None) -> torch.Tensor | None:
            if value is None:
                return None
            value = value.to(device=device, non_blocking=True)
            return value.repeat(batch, *([1] * (value.ndim - 1)))

        kwargs = {}
        if motion.embeddings is not None:
            videos = motion.embeddings.shape[0]
            kwargs = {
                "point_embeddings": motion.embeddings.repeat(batch // videos, 1, 1).repeat_interleave(
                    frames, dim=0
                ),
                "point_positions": per_row(motion.positions),
                "point_visible": per_row(motion.visible),
            }
        return self.motion_controlnet(
            sample.to(dtype),
            t,
            encoder_hidden_states=image_embeddings.to(dtype),
            added_time_ids=added_time_ids.to(dtype),
            dense_flow=per_row(motion.dense_flow),
            trajectory_flow=per_row(motion.trajectory_flow),
            conditioning_scale=motion.scale,
            return_dict=False,
            **kwargs,
        )

    def decode_latents(
        self, latents: torch.Tensor, num_frames: int, decode_chunk_size: int = 14
    ) -> torch.Tensor:
        """``(B, F, 4, h, w)`` -> ``(B, 3, F, H, W)`` float32, ``decode_chunk_size`` frames per VAE call."""
        latents = (1 / self.vae.config.scaling_factor) * latents.flatten(0, 1)
        frames = [  # each chunk decoded on the execution device, its frames kept where the latents are
            self._decode_chunk(latents[start : start + decode_chunk_size]).to(latents.device)
            for start in range(0, latents.shape[0], decode_chunk_size)
        ]
        video = torch.cat(frames).reshape(-1, num_frames, *frames[0].shape[1:]).permute(0, 2, 1, 3, 4)
        return video.float()

    def _decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(f, 4, h, w)`` (on any device) -> frames ``(f, 3, H, W)`` in one VAE call on the
        execution device."""
        latents = latents.to(self._execution_device, non_blocking=True)
        forward = self.vae._orig_mod.forward if is_compiled_module(self.vae) else self.vae.forward
        kwargs = (
            {"num_frames": latents.shape[0]} if "num_frames" in inspect.signature(forward).parameters else {}
        )
        return self.vae.decode(latents, **kwargs).sample

    @torch.no_grad()
    def decode_stream(
        self,
        latents: torch.Tensor,
        decode_chunk_size: int = 14,
        *,
        reference_first: bool = False,
        decode_reference: bool = False,
        output_type: str = "np",
    ) -> Iterator[np.ndarray | torch.Tensor]:
        """One video's frames from its latents ``(1, L, 4, h, w)``, chunk by chunk as each is decoded, so a long
        video goes to its writer without being held: ``(f, H, W, 3)`` float32 in ``[0, 1]`` (``"np"``) or
        ``(f, 3, H, W)`` (``"pt"``), the frames ``__call__`` returns for the same latents and chunk size.

        ``reference_first``: frame 0 is the prepended reference (``output_type="latent"`` with
        ``keep_reference=True``); it is dropped, after being decoded with the first chunk when
        ``decode_reference`` (as ``__call__``). The latents may live on another device than the VAE (the host):
        each chunk is moved when it is decoded."""
        if latents.ndim != 5 or latents.shape[0] != 1:
            raise ValueError(
                f"decode_stream takes one video's latents (1, L, 4, h, w), got {tuple(latents.shape)}"
            )
        if output_type not in ("np", "pt"):
            raise ValueError(f"decode_stream's `output_type` must be 'np' or 'pt', got {output_type!r}")
        if reference_first and not decode_reference:
            latents = latents[:, 1:]
        drop_first = reference_first and decode_reference
        scale = 1 / self.vae.config.scaling_factor
        for start in range(0, latents.shape[1], decode_chunk_size):  # read chunk by chunk where they live
            video = self._decode_chunk(scale * latents[0, start : start + decode_chunk_size])
            video = video[None].permute(0, 2, 1, 3, 4).float()  # (1, 3, f, H, W) as decode_latents
            if start == 0 and drop_first:
                video = video[:, :, 1:]
            if video.shape[2]:
                yield self.video_processor.postprocess_video(video=video, output_type=output_type)[0]

    def check_inputs(
        self,
        image: Any,
        height: int,
        width: int,
        tile_size: int,
        tile_overlap: int,
        cfg_mode: str,
        output_type: str,
        conditioning_scales: Mapping[str, float],
        guidance_maps: Mapping[str, Any] | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
        uses_pose: bool = False,
    ) -> None:
        if not isinstance(image, torch.Tensor | PIL.Image.Image | list):
            raise ValueError(
                f"`image` must be a torch.Tensor, PIL.Image.Image or list of them, got {type(image)}"
            )
        if height % 8 != 0 or width % 8 != 0:
            raise ValueError(f"`height` and `width` must be divisible by 8, got {height} and {width}")
        if cfg_mode not in CFG_MODES:
            raise ValueError(f"`cfg_mode` must be one of {CFG_MODES}, got {cfg_mode!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if tile_size < 1 or not 0 <= tile_overlap < tile_size:
            raise ValueError(
                f"need tile_size >= 1 and 0 <= tile_overlap < tile_size, got {tile_size}, {tile_overlap}"
            )
        known = {
            "pose",
            *(self.guidance_encoders.guidance_types if self.guidance_encoders is not None else ()),
            *(("motion",) if self.motion_controlnet is not None else ()),
        }
        if set(conditioning_scales) - known:
            raise ValueError(
                f"unknown conditioning scales {sorted(set(conditioning_scales) - known)}; "
                f"known: {sorted(known)}"
            )
        if guidance_maps and self.guidance_encoders is None:
            raise ValueError("`guidance_maps` given but the pipeline has no `guidance_encoders`")
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback tensor inputs {bad} not in {self._callback_tensor_inputs}")
        in_use = (
            ("pose_guider", self.pose_guider, uses_pose),
            ("guidance_encoders", self.guidance_encoders, bool(guidance_maps)),
        )
        for name, module, used in in_use:
            if module is None or not used:
                continue
            if module.downsample_factor != self.vae_scale_factor:
                raise ValueError(
                    f"{name} downsamples by {module.downsample_factor}, the VAE by {self.vae_scale_factor}"
                )
            if module.config.out_channels != self.unet.config.block_out_channels[0]:
                raise ValueError(
                    f"{name} outputs {module.config.out_channels} channels, "
                    f"the UNet's conv_in {self.unet.config.block_out_channels[0]}"
                )

    def check_motion_inputs(
        self,
        dense_flow: ArrayInput | None,
        trajectory_flow: ArrayInput | None,
        point_features: torch.Tensor | None,
        keypoints: ArrayInput | None,
        reference_keypoints: ArrayInput | None,
        residual_mode: str | None,
        controlnet_cfg: str,
    ) -> None:
        if controlnet_cfg not in CONTROLNET_CFG_MODES:
            raise ValueError(
                f"`controlnet_cfg` must be one of {CONTROLNET_CFG_MODES}, got {controlnet_cfg!r}"
            )
        if residual_mode is not None and residual_mode not in RESIDUAL_MODES:
            raise ValueError(f"`residual_mode` must be one of {RESIDUAL_MODES}, got {residual_mode!r}")
        given = [
            name
            for name, value in (
                ("dense_flow", dense_flow),
                ("trajectory_flow", trajectory_flow),
                ("point_features", point_features),
            )
            if value is not None
        ]
        if not given:
            return
        controlnet = self.motion_controlnet
        if controlnet is None:
            raise ValueError(f"{', '.join(given)} given but the pipeline has no `motion_controlnet`")
        skips = sum(len(block.resnets) for block in self.unet.up_blocks)
        if controlnet.num_skip_connections != skips:
            raise ValueError(
                f"motion_controlnet has {controlnet.num_skip_connections} skip residuals, the UNet {skips} skips"
            )
        if (dense_flow is not None or trajectory_flow is not None) and (
            controlnet.motion_downsample_factor != self.vae_scale_factor
        ):
            raise ValueError(
                f"motion_controlnet's flow branches downsample by {controlnet.motion_downsample_factor}, "
                f"the VAE by {self.vae_scale_factor}"
            )
        if point_features is None:
            return
        if keypoints is None or reference_keypoints is None:
            raise ValueError("`point_features` need `keypoints` and `reference_keypoints`")
        keypoints_shape, reference_shape = tuple(np.shape(keypoints)), tuple(np.shape(reference_keypoints))
        if len(keypoints_shape) != 3 or keypoints_shape[-1] != 3 or reference_shape != keypoints_shape[1:]:
            raise ValueError(
                f"`keypoints` must be (F, K, 3) and `reference_keypoints` (K, 3), got {keypoints_shape} "
                f"and {reference_shape}"
            )
        channels = point_features.shape[-3]
        if channels != controlnet.config.point_embedding_channels:
            raise ValueError(
                f"`point_features` have {channels} channels, the point adapter takes "
                f"{controlnet.config.point_embedding_channels}"
            )

    def prepare_latents(
        self,
        batch_size: int,
        num_frames: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
        noise_period: int | None = None,
    ) -> torch.Tensor:
        """Initial noise ``(B, L, 4, h, w)`` times ``init_noise_sigma``. ``noise_period``: ``noise_period``
        frames are drawn once and repeated along the sequence, frame ``k`` = frame ``k mod noise_period``
        (MimicMotion, DisPose: ``pipeline_mimicmotion.py:515-526``); given ``latents`` are used as they are."""
        shape = (
            batch_size,
            num_frames,
            num_channels_latents // 2,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"{len(generator)} generators for an effective batch of {batch_size}")
        if latents is None and noise_period is not None:
            period = randn_tensor(
                (batch_size, noise_period, *shape[2:]), generator=generator, device=device, dtype=dtype
            )
            latents = period.repeat(1, num_frames // noise_period + 1, 1, 1, 1)[:, :num_frames]
        elif latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}")
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    @property
    def guidance_scale(self) -> float | torch.Tensor:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        # Decided once from max_guidance_scale: SVD re-derives it from the per-frame scales, which for one
        # frame (linspace -> [min]) flips it mid-call and crashes.
        return self._do_classifier_free_guidance

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def _predict_tile(
        self,
        injector: UNetInjector,
        temporal: TemporalContext,
        latent_input: torch.Tensor,
        t: torch.Tensor,
        image_latents: torch.Tensor,
        image_embeddings: torch.Tensor,
        added_time_ids: torch.Tensor,
        features: torch.Tensor | None,
        shared_features: torch.Tensor | None,
        guidance_scale: torch.Tensor,
        cfg_mode: str,
        motion: _MotionInputs | None = None,
        identity: Callable[[int], Any] | None = None,
    ) -> torch.Tensor:
        """One tile's guided prediction, ``(B, n, 4, h, w)``. ``features`` go to the conditional half only,
        ``shared_features`` to both halves. ``identity(skip_rows)``: the identity adapter's context, for the
        conditional rows only (a batched CFG call skips the B * n unconditional rows; a sequential
        unconditional call gets none)."""
        batch, frames = latent_input.shape[:2]
        cond_residual = features if shared_features is None else shared_features
        if features is not None and shared_features is not None:
            cond_residual = features + shared_features
        cond_residual = cond_residual.repeat(batch, 1, 1, 1) if cond_residual is not None else None
        uncond_residual = shared_features.repeat(batch, 1, 1, 1) if shared_features is not None else None
        image_latents = image_latents.expand(-1, frames, -1, -1, -1)
        keep = motion is not None and motion.cfg == "keep"

        def unet(
            sample: torch.Tensor,
            rows: slice,
            residual: torch.Tensor | None,
            skip_rows: int,
            controlnet_from: int | None,
        ) -> torch.Tensor:
            """``controlnet_from``: the first video row of this call the ControlNet runs on (None: no rows)."""
            embeddings, time_ids = image_embeddings[rows], added_time_ids[rows]
            first_video = rows.start or 0
            down = mid = None
            if motion is not None and controlnet_from is not None:
                first = controlnet_from
                with temporal.call(image_embeddings, first_video + first):
                    down, mid = self._motion_residuals(
                        sample[first:], t, embeddings[first:], time_ids[first:], motion
                    )
            controlnet_skip = (controlnet_from or 0) * frames
            identity_context = nullcontext()
            if identity is not None and (not self.do_classifier_free_guidance or rows.start == batch):
                identity_context = identity(0)
            elif identity is not None and rows.start is None:
                identity_context = identity(batch * frames)
            with (
                identity_context,
                injector.conv_in_residual(residual, skip_rows),
                injector.controlnet_residuals(down, mid, motion.mode if motion else "once", controlnet_skip),
                temporal.call(image_embeddings, first_video),
            ):
                return self.unet(
                    sample, t, encoder_hidden_states=embeddings, added_time_ids=time_ids, return_dict=False
                )[0]

        if not self.do_classifier_free_guidance:
            return unet(torch.cat([latent_input, image_latents], dim=2), slice(None), cond_residual, 0, 0)
        if cfg_mode == "batched":
            sample = torch.cat([torch.cat([latent_input] * 2), image_latents], dim=2)
            if uncond_residual is None:
                residual, skip_rows = cond_residual, batch * frames
            else:
                residual, skip_rows = torch.cat([uncond_residual, cond_residual]), 0
            uncond, cond = unet(sample, slice(None), residual, skip_rows, 0 if keep else batch).chunk(2)
        else:
            uncond_sample = torch.cat([latent_input, image_latents[:batch]], dim=2)
            uncond = unet(uncond_sample, slice(0, batch), uncond_residual, 0, 0 if keep else None)
            cond_sample = torch.cat([latent_input, image_latents[batch:]], dim=2)
            cond = unet(cond_sample, slice(batch, None), cond_residual, 0, 0)
        return uncond + guidance_scale * (cond - uncond)

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | list[PIL.Image.Image] | torch.Tensor,
        pose_images: FrameInput | None = None,
        guidance_maps: Mapping[str, FrameInput] | None = None,
        reference_pose_image: FrameInput | None = None,
        reference_guidance_maps: Mapping[str, FrameInput] | None = None,
        dense_flow: ArrayInput | None = None,
        trajectory_flow: ArrayInput | None = None,
        point_features: torch.Tensor | None = None,
        keypoints: ArrayInput | None = None,
        reference_keypoints: ArrayInput | None = None,
        keypoint_threshold: float = 0.3,
        residual_mode: str | None = None,
        controlnet_cfg: str = "keep",
        height: int = 576,
        width: int = 1024,
        num_frames: int | None = None,
        tile_size: int = 16,
        tile_overlap: int = 6,
        prepend_reference: bool = True,
        decode_reference: bool = False,
        periodic_noise: bool = False,
        temporal_context: str = "per_video",
        point_rules: str = "default",
        guidance_range: str = "signed",
        guidance_cfg: str = "cond",
        num_inference_steps: int = 25,
        sigmas: list[float] | None = None,
        min_guidance_scale: float = 2.0,
        max_guidance_scale: float = 2.0,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.0,
        decode_chunk_size: int | None = None,
        num_videos_per_prompt: int = 1,
        conditioning_scales: Mapping[str, float] | None = None,
        cfg_mode: str = "batched",
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, Any, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        tile_group: TileGroup | None = None,
        feature_cache: str = "none",
        keep_reference: bool = False,
        face_embedding: torch.Tensor | np.ndarray | None = None,
        identity_scale: float = 1.0,
        sequence_device: str | torch.device | None = None,
    ) -> AnimationPipelineOutput | tuple:
        r"""Animate ``image`` with ``pose_images`` (and ``guidance_maps``).

        Args:
            image: the reference (PIL, list of PIL, or tensor ``(B, 3, H, W)`` in ``[0, 1]``).
            pose_images: skeleton images, one per output frame (list of PIL, array ``(F, H, W, 3)``, tensor
                ``(F, 3, H, W)`` in ``[0, 1]``); the same sequence drives every video of the batch.
            guidance_maps: ``{"depth" | "normal" | "semantic" | ...: frames}``, same forms and length.
            reference_pose_image, reference_guidance_maps: the reference's own pose / maps, used for the
                prepended reference frame (zero features when absent).
            dense_flow, trajectory_flow: the motion ControlNet's flows, one per output frame, ``(F, H, W, 2)``
                (or ``(F, 2, H, W)``) in pixels, x then y: reference -> frame t, and frame t-1 -> t. A grid
                other than ``height x width`` is resized and its vectors scaled. The prepended reference frame
                gets zero flows.
            point_features: reference features for the point adapter, ``(1 or B, E, h, w)`` (DIFT: 1280 x
                H/16 x W/16); sampled at ``reference_keypoints`` ``(K, 3)`` and placed at ``keypoints``
                ``(F, K, 3)`` (x, y in pixels of the output, score); a point counts where both scores reach
                ``keypoint_threshold``. The ControlNet runs when any of these motion inputs is given.
            residual_mode: ``"once"`` | ``"dispose"``; default: the ControlNet's config (DisPose.pth: dispose).
            controlnet_cfg: ``"keep"`` (the negative half runs the ControlNet with the same flows and points,
                as DisPose) or ``"drop"`` (no ControlNet residuals in the negative half).
            num_frames: output frames; default: the guidance's length, else ``unet.config.num_frames``.
            tile_size, tile_overlap: frames per UNet call and the overlap of consecutive tiles (counting the
                shared reference frame when ``prepend_reference``). Any length works, from 1 frame up.
            prepend_reference: denoise the reference as frame 0 of every tile (MimicMotion); not returned.
            decode_reference: decode the prepended reference frame with the video (frames ``0..L-1`` in chunks
                from frame 0) and drop it afterwards, as MimicMotion and DisPose (their VAE decoder mixes the
                frames of a chunk); default: drop it first, decode frames ``1..L-1``.
            periodic_noise: draw ``tile_size`` frames of initial noise once and repeat them along the sequence
                (MimicMotion, DisPose); default: fresh noise for every frame.
            temporal_context: ``"per_video"`` (each temporal-attention row sees its own video's CLIP token) or
                ``"diffusers_0.27"`` (the pairing by pixel of diffusers 0.27, which DisPose's published videos
                carry under batched CFG; ``pipelines.temporal_context``), in the UNet and the ControlNet.
            point_rules: ``"default"`` or ``"dispose"``: DisPose's reference-point reading and placement,
                defects included (``_prepare_motion``).
            guidance_range: ``"signed"`` (maps in ``[-1, 1]``) or ``"unit"`` (``[0, 1]``, uint8 / 255: Champ).
            guidance_cfg: ``"cond"`` (guidance-encoder features in the conditional half only, as the pose
                guider's) or ``"both"`` (both halves of classifier-free guidance: Champ).
            min_guidance_scale, max_guidance_scale: per-frame CFG scale, ``linspace`` over the sequence.
            fps, motion_bucket_id, noise_aug_strength: SVD micro-conditioning (the UNet sees ``fps - 1``).
            decode_chunk_size: frames per VAE decode call (peak memory); defaults to all frames.
            conditioning_scales: ``{"pose": s, "<guidance type>": s, "motion": s}``, default 1; 0 switches a
                path off (``"motion"`` is the ControlNet's ``conditioning_scale``).
            cfg_mode: ``"batched"`` (one UNet call of 2B) or ``"sequential"`` (two calls of B, less memory).
            generator, latents: as diffusers; ``latents`` has shape ``(B, L, 4, h, w)`` with ``L`` including
                the prepended reference frame.
            output_type: ``"pil" | "np" | "pt" | "latent"``. return_dict: output dataclass or a tuple.
            callback_on_step_end, callback_on_step_end_tensor_inputs: as diffusers; the callback may return
                ``{"latents": ...}`` to replace the latents; set ``pipe._interrupt = True`` to stop.
            feature_cache: where the pose guider's and the guidance encoders' features live between steps:
                ``"none"`` (each tile's frames read and encoded when the tile is predicted, every step: only the
                latents and the fusion sums grow with length) or ``"host"`` (each frame encoded once and kept on
                the CPU: faster, memory grows with length). The same output either way.
            keep_reference: with ``output_type="latent"`` and ``prepend_reference``, keep the reference frame's
                latent at index 0 (to decode it with the video later: ``decode_stream``).
            tile_group: split the tiles of each step over processes (``pipelines.distributed``): every rank
                calls with the same inputs and seed, predicts its share of the tiles (all of a single
                tile), the weighted predictions are summed over the ranks, and every rank steps, decodes and
                returns the same output. The callback must act alike on every rank.
            face_embedding: the reference's face embedding, ``(E,)`` or ``(1 or B, E)`` (dlib 128-d or ArcFace
                512-d, as the identity adapter was trained; ``animate.face`` computes it from the reference
                image: the pipeline holds no face model), for the ``identity_adapter``. Ignored without one.
            identity_scale: weight of the identity attention; 0 is exactly no adapter. Under classifier-free
                guidance the identity tokens go to the conditional half only (as SVD's CLIP token, zeros in
                the unconditional half), so guidance pushes towards the reference's identity.
            sequence_device: where the whole-length tensors live (latents, the fused prediction and weight
                sums, the scheduler step): default the execution device; ``"cpu"`` keeps them on the host
                when the GPU is short, and only each tile's window goes to the execution device for its
                UNet call (its prediction comes back). The same latents either way; ``output_type="latent"``
                returns them there, and the VAE decodes them chunk by chunk from there.
        """
        # 0. Defaults
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        conditioning_scales = dict(conditioning_scales or {})
        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        per_frame = [pose_images, *(guidance_maps or {}).values(), dense_flow, trajectory_flow]
        if point_features is not None:
            per_frame.append(keypoints)
        guidance_lengths = {len(frames) for frames in per_frame if frames is not None}
        if len(guidance_lengths) > 1:
            raise ValueError(
                f"pose images, guidance maps, flows and keypoints differ in length: {sorted(guidance_lengths)}"
            )
        if num_frames is None:
            num_frames = guidance_lengths.pop() if guidance_lengths else self.unet.config.num_frames
        elif guidance_lengths and guidance_lengths != {num_frames}:
            raise ValueError(f"num_frames={num_frames} but the guidance has {guidance_lengths.pop()} frames")
        sequence_length = num_frames + int(prepend_reference)
        decode_reference = decode_reference and prepend_reference
        decode_chunk_size = decode_chunk_size or (sequence_length if decode_reference else num_frames)

        # 1. Check inputs
        self.check_inputs(
            image,
            height,
            width,
            tile_size,
            tile_overlap,
            cfg_mode,
            output_type,
            conditioning_scales,
            guidance_maps,
            callback_on_step_end_tensor_inputs,
            uses_pose=pose_images is not None or reference_pose_image is not None,
        )
        for name, value, allowed in (
            ("temporal_context", temporal_context, TEMPORAL_CONTEXTS),
            ("point_rules", point_rules, POINT_RULES),
            ("guidance_range", guidance_range, GUIDANCE_RANGES),
            ("guidance_cfg", guidance_cfg, GUIDANCE_CFG_MODES),
            ("feature_cache", feature_cache, FEATURE_CACHES),
        ):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")
        self.check_motion_inputs(
            dense_flow,
            trajectory_flow,
            point_features,
            keypoints,
            reference_keypoints,
            residual_mode,
            controlnet_cfg,
        )
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")

        # 2. Call parameters
        if isinstance(image, PIL.Image.Image):
            batch_size = 1
        elif isinstance(image, list):
            batch_size = len(image)
        else:
            batch_size = image.shape[0]
        effective_batch = batch_size * num_videos_per_prompt
        device = self._execution_device
        sequence_device = device if sequence_device is None else torch.device(sequence_device)
        self._guidance_scale = max_guidance_scale
        self._do_classifier_free_guidance = max_guidance_scale > 1
        self._interrupt = False
        do_cfg = self.do_classifier_free_guidance

        # 3. Encode the reference with CLIP
        image_embeddings = self._encode_image(image, device, num_videos_per_prompt, do_cfg)

        identity_tokens = self._identity_tokens(
            face_embedding, identity_scale, batch_size, num_videos_per_prompt, device
        )

        # 4. Encode the reference with the VAE (noise-augmented), SVD's order of random draws
        pixels = self.video_processor.preprocess(image, height=height, width=width).to(device)
        noise = randn_tensor(pixels.shape, generator=generator, device=device, dtype=pixels.dtype)
        pixels = pixels + noise_aug_strength * noise
        needs_upcasting = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if needs_upcasting:
            self.vae.to(dtype=torch.float32)
        image_latents = self._encode_vae_image(pixels, device, num_videos_per_prompt, do_cfg)
        image_latents = image_latents.to(image_embeddings.dtype)
        if needs_upcasting:
            self.vae.to(dtype=torch.float16)

        # 5. Pose images and guidance maps become conv_in features per tile, when the tile is predicted (the
        #    reference frame's once); the motion ControlNet's inputs likewise (it runs with the UNet, per call)
        tile_features = self._guidance_features(
            pose_images,
            guidance_maps,
            reference_pose_image,
            reference_guidance_maps,
            conditioning_scales,
            num_frames,
            prepend_reference,
            height,
            width,
            device,
            guidance_range,
            guidance_cfg,
            feature_cache,
        )

        motion = self._prepare_motion(
            dense_flow,
            trajectory_flow,
            point_features,
            keypoints,
            reference_keypoints,
            keypoint_threshold,
            conditioning_scales.get("motion", 1.0),
            residual_mode,
            controlnet_cfg,
            prepend_reference,
            batch_size,
            num_videos_per_prompt,
            height,
            width,
            device,
            point_rules,
        )

        # 6. Added time ids (SVD was trained on fps - 1)
        added_time_ids = self._get_add_time_ids(
            fps - 1, motion_bucket_id, noise_aug_strength, image_embeddings.dtype, effective_batch, do_cfg
        ).to(device)

        # 7. Timesteps
        if sigmas is not None:
            self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 8. Latents for the whole sequence, on the sequence device (drawn there unless a generator lives on
        #    another kind of device: the same numbers as drawn for the execution device either way)
        generators = generator if isinstance(generator, list) else [generator]
        same_kind = all(g is None or g.device.type == sequence_device.type for g in generators)
        latents = self.prepare_latents(
            effective_batch,
            sequence_length,
            self.unet.config.in_channels,
            height,
            width,
            image_embeddings.dtype,
            sequence_device if same_kind else device,
            generator,
            latents,
            noise_period=tile_size if periodic_noise else None,
        ).to(sequence_device)

        # 9. Per-frame guidance scale and tiles
        guidance_scale = torch.linspace(min_guidance_scale, max_guidance_scale, sequence_length).unsqueeze(0)
        guidance_scale = _append_dims(
            guidance_scale.to(device, latents.dtype).repeat(effective_batch, 1), latents.ndim
        )
        self._guidance_scale = guidance_scale
        tiles = tile_indices(sequence_length, tile_size, tile_overlap, anchor_first=prepend_reference)

        # 10. Denoising loop: every tile predicts, predictions fused, one scheduler step on the full length
        with (
            UNetInjector(self.unet) as injector,
            IdentityInjector(self.unet, self.identity_adapter)
            if identity_tokens is not None
            else nullcontext() as identity_injector,
            TemporalContext((self.unet, self.motion_controlnet), temporal_context) as temporal,
            self.progress_bar(total=len(timesteps)) as progress_bar,
        ):
            identity = None
            if identity_tokens is not None:

                def identity(skip_rows: int) -> Any:
                    return identity_injector.identity(identity_tokens, identity_scale, skip_rows)

            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue

                def window(idx: list[int] | None, t=t, whole=latents) -> torch.Tensor:
                    """A tile's latents on the execution device, scaled (elementwise: as scaling them all)."""
                    part = whole if idx is None else whole[:, idx]
                    return self.scheduler.scale_model_input(part.to(device, non_blocking=True), t)

                def predict(idx: list[int], sample: torch.Tensor, scale: torch.Tensor, t=t) -> torch.Tensor:
                    cond, shared = tile_features.tile(idx) if tile_features is not None else (None, None)
                    return self._predict_tile(
                        injector, temporal, sample, t, image_latents, image_embeddings, added_time_ids, cond,
                        shared, scale, cfg_mode, motion.tile(idx) if motion is not None else None,
                        identity,
                    )  # fmt: skip

                if len(tiles) == 1:  # every rank predicts it: no exchange
                    noise_pred = predict(tiles[0], window(None), guidance_scale).to(sequence_device)
                else:  # the fusion sums live on the sequence device; each tile's weighted prediction comes back
                    noise_pred = torch.zeros_like(latents)
                    weight_sum = latents.new_zeros(sequence_length)
                    for idx in tiles if tile_group is None else tile_group.share(tiles):
                        weights = triangular_weights(len(idx), device, latents.dtype)
                        prediction = predict(idx, window(idx), guidance_scale[:, idx])
                        noise_pred[:, idx] += (prediction * weights[:, None, None, None]).to(sequence_device)
                        weight_sum[idx] += weights.to(sequence_device)
                    if tile_group is not None:
                        _all_reduce_sums(tile_group, device, tile_size, noise_pred, weight_sum)
                    noise_pred = noise_pred / weight_sum[:, None, None, None]

                latents = self.scheduler.step(noise_pred, t, latents).prev_sample

                if callback_on_step_end is not None:
                    available = {"latents": latents, "noise_pred": noise_pred}
                    callback_kwargs = {k: available[k] for k in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.pop("latents", latents).to(sequence_device)
                progress_bar.update()

        # 11. Drop the reference frame and decode (or decode it with the video, then drop it)
        if output_type == "latent":
            frames = latents[:, 1:] if prepend_reference and not keep_reference else latents
        else:
            if needs_upcasting:
                self.vae.to(dtype=torch.float16)
            if decode_reference:
                video = self.decode_latents(latents, sequence_length, decode_chunk_size)[:, :, 1:]
            else:
                latents = latents[:, 1:] if prepend_reference else latents
                video = self.decode_latents(latents, num_frames, decode_chunk_size)
            frames = self.video_processor.postprocess_video(video=video, output_type=output_type)

        self.maybe_free_model_hooks()

        if not return_dict:
            return (frames,)
        return AnimationPipelineOutput(frames=frames)
