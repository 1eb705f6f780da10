"""The training forward is the pipeline's own denoiser: one Euler step of ``AnimationPipeline`` from the
training sample's noise level to zero lands exactly on the training forward's denoised estimate, with the
pose guider, guidance encoders and motion ControlNet all contributing; conditioning dropout zeroes the
reference embedding and latent together."""

from __future__ import annotations

import math

import pytest
import torch
from _train_fixtures import SyntheticClips, tiny_train_pipeline

from animate.train.forward import ForwardOptions, pipeline_rules, sample_denoising, sample_generator
from animate.train.objective import EDMObjective
from animate.train.trainer import validation_inputs
from pipelines.testing import reinit_zero_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pipeline_and_item():
    pipe = tiny_train_pipeline(with_motion_controlnet=True)
    for module in (pipe.pose_guider, pipe.guidance_encoders, pipe.motion_controlnet):
        reinit_zero_layers(module, std=0.05)  # every conditioning path contributes
    item = SyntheticClips(count=1, frames=3)[0]
    # a reference the pipeline's image path (uint8 PIL) sees exactly
    item["reference"] = torch.round((item["reference"] + 1) * 127.5) / 127.5 - 1
    return pipe, item


def test_training_denoiser_equals_one_euler_step_of_the_pipeline():
    pipe, item = _pipeline_and_item()
    options = ForwardOptions(conditioning_dropout=0.0, noise_aug_strength=0.0)
    with torch.no_grad():
        out = sample_denoising(pipe, item, EDMObjective(), sample_generator(0, 0, 0), options)
    sigma = float(out.sigma)
    # the pipeline multiplies given latents by init_noise_sigma = sqrt(sigma^2 + 1) (SVD's "leading" spacing)
    latents = out.noisy / math.sqrt(sigma**2 + 1)
    result = pipe(
        **validation_inputs(item, pipe),
        height=16,
        width=16,
        num_frames=3,
        tile_size=4,
        tile_overlap=0,
        sigmas=[sigma, 0.0],  # diffusers takes the final 0 in the list
        min_guidance_scale=1.0,
        max_guidance_scale=1.0,
        noise_aug_strength=0.0,
        fps=options.fps_id,
        motion_bucket_id=options.motion_bucket_id,
        latents=latents,
        output_type="latent",
        **pipeline_rules(pipe),
    ).frames
    # Euler from sigma to 0: x + (0 - sigma) * (x - D) / sigma = D; the pipeline drops the reference frame
    torch.testing.assert_close(result, out.denoised[:, 1:], rtol=0, atol=2e-5)
    # and the conditioning matters at this scale: without it the estimate is elsewhere
    plain = pipe(
        **(validation_inputs(item, pipe) | {"pose_images": None, "guidance_maps": None, "dense_flow": None}),
        height=16,
        width=16,
        num_frames=3,
        tile_size=4,
        tile_overlap=0,
        sigmas=[sigma, 0.0],  # diffusers takes the final 0 in the list
        min_guidance_scale=1.0,
        max_guidance_scale=1.0,
        noise_aug_strength=0.0,
        latents=latents,
        output_type="latent",
    ).frames
    assert (plain - result).abs().max() > 1e-3


def test_conditioning_dropout_zeroes_the_reference_embedding_and_latent_together(monkeypatch):
    pipe, item = _pipeline_and_item()

    def run(dropout: float) -> torch.Tensor:
        options = ForwardOptions(conditioning_dropout=dropout)
        with torch.no_grad():
            return sample_denoising(pipe, item, EDMObjective(), sample_generator(1, 2, 3), options).denoised

    kept, dropped = run(0.0), run(1.0)
    encode_image, encode_vae_image = pipe._encode_image, pipe._encode_vae_image
    monkeypatch.setattr(pipe, "_encode_image", lambda *a, **k: torch.zeros_like(encode_image(*a, **k)))
    monkeypatch.setattr(
        pipe, "_encode_vae_image", lambda *a, **k: torch.zeros_like(encode_vae_image(*a, **k))
    )
    unconditional = run(0.0)
    torch.testing.assert_close(dropped, unconditional, rtol=0, atol=0)
    assert (kept - dropped).abs().max() > 1e-3
