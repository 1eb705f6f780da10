"""One training sample through ``AnimationPipeline``'s own conditioning path, to the EDM loss.

Inference and training share every step that turns inputs into UNet inputs: the CLIP embedding
(``_encode_image``; the reference resized to CLIP's size with antialiasing as the pipeline does for an image),
the noise-augmented reference latent (``_encode_vae_image``), SVD's added time ids (``_get_add_time_ids``),
the pose guider's and guidance encoders' ``conv_in`` features (``_guidance_features``, one tile of the whole sequence), the motion
ControlNet's inputs (``_prepare_motion``) and one UNet call with its injection hooks (``_predict_tile``, no
classifier-free guidance). The pipeline's rules for the loaded parts (``pipelines.parity.call_kwargs``: map
range, CFG halves, residual mode, time context) are the ones inference uses. With ``prepend_reference`` the
sequence is ``[reference, frames]`` as in inference (the reference frame is conditioned on its own pose and
maps, and is a target too).

Conditioning dropout: with probability ``dropout`` a sample loses its CLIP embedding and its reference
latent together (both zero, exactly the unconditional half of classifier-free guidance at inference), and
its identity tokens (the unconditional half gets none at inference either). With an identity adapter and a
sample whose reference shows a face (``reference_face_embedding``), the tokens go to the UNet's spatial
cross-attention through the same hooks as at inference.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _resize_with_antialiasing,
)

from animate.train.objective import EDMObjective

VAE_CHUNK = 8  # frames per VAE encode call


@dataclass(frozen=True)
class ForwardOptions:
    prepend_reference: bool = True
    conditioning_dropout: float = 0.1
    noise_aug_strength: float = 0.02
    fps_id: int = 7  # as the diffusion engine's default (the UNet sees fps_id - 1)
    motion_bucket_id: int = 127
    # identity: the loss of latent cells inside each target frame's face box (the sample's ``face_boxes``)
    # counts 1 + face_loss_weight times; the weights are normalised to mean 1, so the loss scale stays
    face_loss_weight: float = 0.0


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The random stream of one sample draw (sigma, noise, dropout, noise augmentation): a function of the
    run's seed, the epoch and the dataset index only, so it is the same on any rank and after a resume."""
    value = ((int(seed) * 1_000_003 + int(epoch)) * 1_000_003 + int(index)) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def _randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(like.device, like.dtype)


@torch.no_grad()
def encode_latents(pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` in ``[-1, 1]`` -> scaled latents ``(N, 4, h, w)`` (``latent_dist.mode()`` times the
    VAE's ``scaling_factor``), float32."""
    vae = pipe.vae
    chunks = [
        vae.encode(pixels[i : i + VAE_CHUNK].to(vae.device, vae.dtype)).latent_dist.mode()
        for i in range(0, len(pixels), VAE_CHUNK)
    ]
    return torch.cat(chunks).float() * vae.config.scaling_factor


def pipeline_rules(pipe: Any) -> dict[str, Any]:
    """The rules inference applies for the loaded parts (no preset), with the pipeline's defaults."""
    from pipelines import parity

    rules = {
        "guidance_range": "signed",
        "guidance_cfg": "cond",
        "temporal_context": "per_video",
        "point_rules": "default",
    }
    rules.update({k: v for k, v in parity.call_kwargs(pipe, None).items() if k in rules})
    return rules


@dataclass
class Denoising:
    """One training sample's denoising: clean and noisy latents ``(1, L, 4, h, w)``, the noise level, and the
    denoised estimate ``D`` (with the graph to the trainable parts)."""

    clean: torch.Tensor
    noisy: torch.Tensor
    sigma: torch.Tensor
    denoised: torch.Tensor


def sample_loss(
    pipe: Any,
    item: Mapping[str, Any],
    objective: EDMObjective,
    generator: torch.Generator,
    options: ForwardOptions,
    autocast: Any = None,
) -> torch.Tensor:
    """The EDM loss of one clip ``item`` (a dataset sample, no batch axis), a 0-d float32 tensor with the
    graph to the trainable parts."""
    out = sample_denoising(pipe, item, objective, generator, options, autocast)
    boxes = item.get("face_boxes")
    if options.face_loss_weight <= 0 or boxes is None:
        return objective.loss(out.denoised, out.clean, out.sigma)
    frames = item["frames"]
    cells = face_weight_map(
        boxes, frames.shape[-2:], out.clean.shape[-2:], options.face_loss_weight, options.prepend_reference
    ).to(out.clean.device)
    edm = objective.precondition(out.sigma.float()).weight
    squared = (out.denoised.float() - out.clean.float()) ** 2
    return (edm * cells * squared).mean() / cells.mean()


def face_weight_map(
    boxes: torch.Tensor,
    size: tuple[int, int],
    grid: tuple[int, int],
    weight: float,
    prepend_reference: bool,
) -> torch.Tensor:
    """``(1, L, 1, h, w)`` loss weights: 1, plus ``weight`` on the latent cells whose centre lies inside the
    frame's face box (``boxes`` ``(F, 4)`` x0, y0, x1, y1 in pixels of ``size`` = (H, W); NaN: no face).
    The prepended reference frame gets 1 everywhere."""
    (height, width), (h, w) = size, grid
    cy = (torch.arange(h, dtype=torch.float32) + 0.5) * height / h
    cx = (torch.arange(w, dtype=torch.float32) + 0.5) * width / w
    rows = []
    for x0, y0, x1, y1 in boxes.float().tolist():
        inside = torch.zeros(h, w)
        if all(v == v for v in (x0, y0, x1, y1)):  # NaN != NaN: no face in this frame
            inside = ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]
        rows.append(1.0 + weight * inside.float())
    if prepend_reference:
        rows.insert(0, torch.ones(h, w))
    return torch.stack(rows)[None, :, None]


def sample_denoising(
    pipe: Any,
    item: Mapping[str, Any],
    objective: EDMObjective,
    generator: torch.Generator,
    options: ForwardOptions,
    autocast: Any = None,
) -> Denoising:
    """Draw the sample's noise level, noise and dropout from ``generator`` and denoise it once through the
    pipeline's conditioning path (module docstring)."""
    from controlnets import IdentityInjector
    from pipelines.injection import UNetInjector
    from pipelines.temporal_context import TemporalContext

    device = pipe.unet.device
    rules = pipeline_rules(pipe)
    reference = item["reference"].to(device, torch.float32)[None]  # (1, 3, H, W) in [-1, 1]
    frames = item["frames"].to(device, torch.float32)  # (F, 3, H, W)
    num_frames, _, height, width = frames.shape
    prepend = options.prepend_reference

    # the random draws of this sample, in a fixed order
    sigma = objective.sample_sigmas(1, generator).to(device)
    drop = bool(torch.rand(1, generator=generator).item() < options.conditioning_dropout)
    aug_noise = _randn(reference.shape, generator, reference)

    with torch.no_grad():
        side = int(getattr(pipe.image_encoder.config, "image_size", 224))
        clip_pixels = (_resize_with_antialiasing(reference, (side, side)) + 1.0) / 2.0
        image_embeddings = pipe._encode_image(clip_pixels, device, 1, False)
        image_latents = pipe._encode_vae_image(
            reference + options.noise_aug_strength * aug_noise, device, 1, False
        ).to(image_embeddings.dtype)
        if drop:
            image_embeddings = torch.zeros_like(image_embeddings)
            image_latents = torch.zeros_like(image_latents)
        targets = frames if not prepend else torch.cat([reference, frames])
        clean = encode_latents(pipe, targets)[None]  # (1, L, 4, h, w)
    noise = _randn(clean.shape, generator, clean)
    noisy = clean + sigma.view(1, 1, 1, 1, 1) * noise
    pre = objective.precondition(sigma)
    latent_input = (noisy * pre.c_in.view(1, 1, 1, 1, 1)).to(pipe.unet.dtype)
    timestep = pre.c_noise.to(device)

    known = set(getattr(pipe.guidance_encoders, "guidance_types", None) or ())
    maps = {k: v for k, v in (item.get("guidance_maps") or {}).items() if k in known} or None
    reference_maps = {k: v[None] for k, v in (item.get("reference_guidance") or {}).items() if k in known}
    reference_pose = item.get("reference_pose")
    added_time_ids = pipe._get_add_time_ids(
        options.fps_id - 1,
        options.motion_bucket_id,
        options.noise_aug_strength,
        image_embeddings.dtype,
        1,
        False,
    ).to(device)

    with autocast if autocast is not None else torch.autocast(device.type, enabled=False):
        sequence = list(range(num_frames + int(prepend)))  # one tile: the whole sequence
        encoder = pipe._guidance_features(
            item.get("pose_images"),
            maps,
            None if reference_pose is None else reference_pose[None],
            reference_maps or None,
            {},
            num_frames,
            prepend,
            height,
            width,
            device,
            rules["guidance_range"],
            rules["guidance_cfg"],
            "none",  # no feature cache: the features keep their graph
        )
        features = shared = None
        if encoder is not None:
            features, shared = encoder.tile(sequence)
        if shared is not None:  # one call, no CFG: both kinds of features go to it
            features = shared if features is None else features + shared
        motion = None
        if pipe.motion_controlnet is not None and (
            item.get("dense_flow") is not None or item.get("trajectory_flow") is not None
        ):
            sources = pipe._prepare_motion(
                item.get("dense_flow"),
                item.get("trajectory_flow"),
                None,
                None,
                None,
                0.3,
                1.0,
                None,
                "keep",
                prepend,
                1,
                1,
                height,
                width,
                device,
                rules["point_rules"],
            )
            motion = None if sources is None else sources.tile(sequence)
        pipe._do_classifier_free_guidance = False
        adapter = getattr(pipe, "identity_adapter", None)
        has_face = float(item.get("reference_has_face", 0)) > 0 and not drop
        identity_tokens = None
        if adapter is not None and has_face:
            embedding = item["reference_face_embedding"].to(device, torch.float32)[None]
            identity_tokens = adapter.tokens(embedding)  # with the graph when the adapter is trained
        with (
            IdentityInjector(pipe.unet, adapter) if identity_tokens is not None else nullcontext() as ids,
            UNetInjector(pipe.unet) as injector,
            TemporalContext((pipe.unet, pipe.motion_controlnet), rules["temporal_context"]) as temporal,
        ):
            prediction = pipe._predict_tile(
                injector,
                temporal,
                latent_input,
                timestep,
                image_latents,
                image_embeddings,
                added_time_ids,
                features,
                None,
                None,
                "batched",
                motion,
                None if identity_tokens is None else (lambda skip: ids.identity(identity_tokens, 1.0, skip)),
            )
    sigma_b = sigma.view(1, 1, 1, 1, 1)
    denoised = objective.denoise(prediction.float(), noisy, sigma_b)
    return Denoising(clean=clean, noisy=noisy, sigma=sigma_b, denoised=denoised)
