"""AnimationPipeline on micro models (16x16 frames, 8x8 latents, 2-4 frames, 1-2 steps), against references
written out here: fast enough to run for every mutant of ``pipelines/pipeline_animation.py``.

``reference_latents`` is the whole denoising computation by hand: the CLIP token from hand-normalised
pixels, the VAE latent of the noise-augmented reference, SVD's added time ids ``[fps - 1, motion bucket,
noise aug]``, the generator's order of draws, the pose guider's and the guidance encoders' features added to
``conv_in``'s output (``tests/_unet_oracle.reference_unet``: the UNet forward written out, no hooks), the
motion ControlNet's residuals added once or DisPose's way, classifier-free guidance with per-frame scales
``linspace(min, max)``, MimicMotion's triangular tile blend and Euler v-prediction steps over given sigmas.
The pipeline's latents must equal it; narrower tests pin the decode, the outputs and the argument checks.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from controlnets import GuidanceFusion, MotionControlNet, PointAdapter, PoseGuider
from pipelines import AnimationPipeline
from pipelines import pipeline_animation as pa
from pipelines.distributed import TileGroup
from pipelines.temporal_context import TemporalContext
from pipelines.testing import reinit_zero_layers, svd_scheduler
from tests._unet_oracle import reference_unet

SIZE = 16  # frames are SIZE x SIZE pixels
LATENT = SIZE // 2  # the micro VAE downsamples by 2
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
SIGMAS = [2.0, 0.6, 0.0]  # two Euler steps; small sigmas keep float differences small
ATOL = 2e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def micro_components(residual_mode: str = "once") -> dict:
    """The smallest real components the pipeline accepts: a 2-level UNet of 64 channels without spatial
    cross-attention, a 2-level VAE, a 1-layer CLIP of 8 dims; guider, encoders and ControlNet re-initialised
    so that every conditioning path acts. 64, not 32 channels: diffusers' blocks normalise in 32 groups, and
    with one channel per group the next GroupNorm removes the per-channel time embedding (the timestep and
    the added time ids would change the prediction by 1e-6 only)."""
    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=LATENT,
        in_channels=8,
        out_channels=4,
        block_out_channels=(64, 64),
        layers_per_block=1,
        down_block_types=("DownBlockSpatioTemporal",) * 2,
        up_block_types=("UpBlockSpatioTemporal",) * 2,
        cross_attention_dim=8,
        num_attention_heads=(1, 1),
        projection_class_embeddings_input_dim=12,
        addition_time_embed_dim=4,
        num_frames=2,
    )
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=[32, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        latent_channels=4,
        layers_per_block=1,
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=8,
            projection_dim=8,
            num_hidden_layers=1,
            num_attention_heads=1,
            image_size=SIZE,
            intermediate_size=8,
            patch_size=4,
        )
    )
    pose_guider = PoseGuider(block_out_channels=(4, 4), out_channels=64)
    encoders = GuidanceFusion(
        guidance_types=("depth", "normal"),
        block_out_channels=(4, 4),
        out_channels=64,
        attention_num_heads=1,
        attention_norm_num_groups=4,
    )
    controlnet = MotionControlNet.from_unet(
        unet,
        conditioning_embedding_out_channels=(4, 4),
        point_embedding_channels=4,
        point_mid_channels=4,
        residual_mode=residual_mode,
    )
    for module in (pose_guider, encoders, controlnet):
        reinit_zero_layers(module, std=0.1)
    for module in (unet, vae, image_encoder, pose_guider, encoders, controlnet):
        module.eval()
    return {
        "unet": unet,
        "vae": vae,
        "image_encoder": image_encoder,
        "scheduler": svd_scheduler(),
        "feature_extractor": CLIPImageProcessor(crop_size=SIZE, size=SIZE),
        "pose_guider": pose_guider,
        "guidance_encoders": encoders,
        "motion_controlnet": controlnet,
    }


_COMPONENTS: dict[str, dict] = {}


def make_pipe(residual_mode: str = "once", **replace) -> AnimationPipeline:
    if residual_mode not in _COMPONENTS:
        _COMPONENTS[residual_mode] = micro_components(residual_mode)
    pipe = AnimationPipeline(**(_COMPONENTS[residual_mode] | replace))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe() -> AnimationPipeline:
    """A new pipeline per test (the components are built once): every test runs ``__init__``."""
    return make_pipe()


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def run(pipe: AnimationPipeline, **kwargs):
    inputs = {
        "image": rand(1, 3, SIZE, SIZE, seed=0),
        "height": SIZE,
        "width": SIZE,
        "sigmas": SIGMAS,
        "num_inference_steps": None,
        "generator": torch.Generator().manual_seed(0),
        "output_type": "latent",
        "min_guidance_scale": 1.0,
        "max_guidance_scale": 2.5,
        "noise_aug_strength": 0.02,
    }
    return pipe(**(inputs | kwargs)).frames


# --- the reference ------------------------------------------------------------------------------------


def clip_token(pipe: AnimationPipeline, image: torch.Tensor) -> torch.Tensor:
    """CLIP's image embedding of ``image`` (B, 3, SIZE, SIZE) in [0, 1]: OpenAI's mean and std, no resize."""
    with torch.no_grad():
        return pipe.image_encoder((image - CLIP_MEAN) / CLIP_STD).image_embeds[:, None]


def reference_latents(
    pipe: AnimationPipeline,
    num_frames: int,
    tiles: list[list[int]],
    weights: list[float],
    *,
    image: torch.Tensor | None = None,
    seed: int = 0,
    prepend_reference: bool = True,
    cond_features: torch.Tensor | None = None,
    shared_features: torch.Tensor | None = None,
    flows: torch.Tensor | None = None,
    trajectories: torch.Tensor | None = None,
    points: dict | None = None,
    motion_scale: float = 1.0,
    mode: str = "once",
    controlnet_cfg: str = "keep",
    min_scale: float = 1.0,
    max_scale: float = 2.5,
    fps: int = 7,
    bucket: int = 127,
    aug: float = 0.02,
    sigmas: list[float] = SIGMAS,
    initial: torch.Tensor | None = None,
    temporal_027: bool = False,
) -> torch.Tensor:
    """The latents (1, L, 4, h, w) of a one-video run, by hand. ``cond_features`` / ``shared_features``:
    conv_in features per frame of the sequence (L, C, h, w) for the conditional half / both halves; ``flows``
    (L, 2, H, W) dense flows per frame of the sequence; ``points``: the ControlNet's point inputs per frame
    of the sequence (``embeddings`` (1, K, E), ``positions`` (L, K, 2), ``visible`` (L, K)); ``initial``: the
    initial latents (1, L, 4, h, w) instead of the generator's second draw; ``temporal_027``: both halves in
    one call under diffusers 0.27's time context (no conv_in features, no points)."""
    image = rand(1, 3, SIZE, SIZE, seed=0) if image is None else image
    unet, length = pipe.unet, num_frames + int(prepend_reference)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        noise = torch.randn(image.shape, generator=generator)  # SVD draws the augmentation noise first
        image_latent = pipe.vae.encode(image * 2 - 1 + aug * noise).latent_dist.mode()[:, None]
        x = torch.randn((1, length, 4, LATENT, LATENT), generator=generator) if initial is None else initial
        token = clip_token(pipe, image)
        ids = torch.tensor([[fps - 1.0, bucket, aug]])
        do_cfg = max_scale > 1
        scales = torch.linspace(min_scale, max_scale, length)
        x = x * (sigmas[0] ** 2 + 1) ** 0.5
        for sigma, sigma_next in itertools.pairwise(sigmas):
            sigma_t = torch.tensor(sigma, dtype=torch.float32)
            t = 0.25 * sigma_t.log()
            x_in = x / (sigma_t**2 + 1) ** 0.5
            fused = torch.zeros_like(x)
            total = torch.zeros(length)
            for idx in tiles:
                n = len(idx)

                def call(sample, context, features, controlnet, idx=idx, n=n, t=t, ids2=None):
                    ids_ = ids if ids2 is None else ids2
                    rows = sample.shape[0]
                    down = mid = None
                    if controlnet:
                        kwargs = {}
                        if points is not None:
                            kwargs = {
                                "point_embeddings": points["embeddings"].repeat_interleave(n, 0),
                                "point_positions": points["positions"][idx],
                                "point_visible": points["visible"][idx],
                            }
                        down, mid = pipe.motion_controlnet(
                            sample,
                            t,
                            encoder_hidden_states=context,
                            added_time_ids=ids_,
                            dense_flow=None if flows is None else flows[idx].repeat(rows, 1, 1, 1),
                            trajectory_flow=None
                            if trajectories is None
                            else trajectories[idx].repeat(rows, 1, 1, 1),
                            conditioning_scale=motion_scale,
                            return_dict=False,
                            **kwargs,
                        )
                    return reference_unet(unet, sample, t, context, ids_, features, down, mid, mode)

                def part(features, idx=idx):
                    return None if features is None else features[idx]

                uses_controlnet = flows is not None or trajectories is not None or points is not None
                latent = image_latent.expand(1, n, -1, -1, -1)
                cond_part = part(cond_features)
                if shared_features is not None:
                    cond_part = (
                        part(shared_features) if cond_part is None else cond_part + part(shared_features)
                    )
                cond = call(torch.cat([x_in[:, idx], latent], 2), token, cond_part, uses_controlnet)
                prediction = cond
                if do_cfg and temporal_027:  # one call of both halves: rows pair pixel p with video p mod 2
                    uncond_sample = torch.cat([x_in[:, idx], torch.zeros_like(latent)], 2)
                    with TemporalContext([unet, pipe.motion_controlnet], "diffusers_0.27"):
                        both = call(
                            torch.cat([uncond_sample, torch.cat([x_in[:, idx], latent], 2)]),
                            torch.cat([torch.zeros_like(token), token]),
                            None,
                            uses_controlnet,
                            ids2=torch.cat([ids, ids]),
                        )
                    uncond, cond = both.chunk(2)
                    prediction = uncond + scales[idx].view(1, n, 1, 1, 1) * (cond - uncond)
                elif do_cfg:
                    uncond_sample = torch.cat([x_in[:, idx], torch.zeros_like(latent)], 2)
                    uncond = call(
                        uncond_sample,
                        torch.zeros_like(token),
                        part(shared_features),
                        uses_controlnet and controlnet_cfg == "keep",
                    )
                    prediction = uncond + scales[idx].view(1, n, 1, 1, 1) * (cond - uncond)
                w = torch.tensor(weights if len(tiles) > 1 else [1.0] * n)
                fused[:, idx] += prediction * w.view(1, n, 1, 1, 1)
                total[idx] += w
            fused = fused / total.view(1, length, 1, 1, 1)
            # Euler, v-prediction: x0 = -sigma / sqrt(sigma^2 + 1) * v + x / (sigma^2 + 1)
            denoised = fused * (-sigma_t / (sigma_t**2 + 1) ** 0.5) + x / (sigma_t**2 + 1)
            x = x + (x - denoised) / sigma_t * (sigma_next - sigma_t)
    return x


def pose_features(pipe, poses: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The pose guider's features of frames in [0, 1] (they reach it in [-1, 1])."""
    with torch.no_grad():
        return pipe.pose_guider(poses * 2 - 1) * scale


def map_features(pipe, maps: dict, scales: dict | None = None, unit: bool = False) -> torch.Tensor:
    with torch.no_grad():
        return pipe.guidance_encoders({k: v if unit else v * 2 - 1 for k, v in maps.items()}, scales or {})


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-4)


# --- whole runs against the reference -----------------------------------------------------------------


def test_plain_run_equals_the_hand_written_svd_loop(pipe):
    """No conditioning, no reference frame, one tile: CLIP token, VAE latent, time ids, CFG and Euler."""
    out = run(pipe, num_frames=3, prepend_reference=False, fps=9, motion_bucket_id=30, noise_aug_strength=0.1)
    expected = reference_latents(pipe, 3, [[0, 1, 2]], [], prepend_reference=False, fps=9, bucket=30, aug=0.1)
    close(out, expected)


@pytest.mark.parametrize("cfg_mode", ["batched", "sequential"])
def test_pose_and_maps_reach_conv_in_of_the_conditional_half_tiles_blend_triangularly(pipe, cfg_mode):
    """4 frames + the reference, tiles of 3 overlapping by 2: [0, 1, 2], [0, 2, 3], [0, 3, 4], weights
    (1/3, 1, 1/3); the reference frame gets the reference's pose and no map features."""
    poses, ref_pose, depth = (
        rand(4, 3, SIZE, SIZE, seed=1),
        rand(1, 3, SIZE, SIZE, seed=2),
        rand(4, 3, SIZE, SIZE, seed=3),
    )
    scales = {"pose": 0.5, "depth": 1.5}
    out = run(
        pipe,
        pose_images=poses,
        reference_pose_image=torch.cat([ref_pose, poses[:1]]),  # only its first frame counts
        guidance_maps={"depth": depth},
        conditioning_scales=scales,
        tile_size=3,
        tile_overlap=2,
        cfg_mode=cfg_mode,
        output_type="latent",
        keep_reference=True,
    )
    maps = map_features(pipe, {"depth": depth}, scales)
    features = pose_features(pipe, torch.cat([ref_pose, poses]), 0.5) + torch.cat(
        [torch.zeros_like(maps[:1]), maps]
    )
    tiles = [[0, 1, 2], [0, 2, 3], [0, 3, 4]]
    expected = reference_latents(pipe, 4, tiles, [1 / 3, 1.0, 1 / 3], cond_features=features)
    close(out, expected)


def test_without_reference_frame_tiles_are_right_aligned_and_blended(pipe):
    """No reference frame, 4 frames in tiles of 3 overlapping by 1: [0, 1, 2], [1, 2, 3] (the last one
    right-aligned); frame 1 weighs 1 in the first tile and 1/3 in the second."""
    poses = rand(4, 3, SIZE, SIZE, seed=4)
    out = run(
        pipe, pose_images=poses, tile_size=3, tile_overlap=1, prepend_reference=False, min_guidance_scale=1.5
    )
    expected = reference_latents(
        pipe, 4, [[0, 1, 2], [1, 2, 3]], [1 / 3, 1.0, 1 / 3], prepend_reference=False,
        cond_features=pose_features(pipe, poses), min_scale=1.5,
    )  # fmt: skip
    close(out, expected)


def test_guidance_cfg_both_unit_range_maps_reach_both_halves(pipe):
    """Champ: maps as uint8 / 255 in [0, 1] to the encoders, their features in both halves; the pose's in
    the conditional half only."""
    poses = rand(2, 3, SIZE, SIZE, seed=5)
    normal = (rand(2, SIZE, SIZE, 3, seed=6) * 255).to(torch.uint8).numpy()
    out = run(
        pipe,
        pose_images=poses,
        guidance_maps={"normal": normal},
        guidance_range="unit",
        guidance_cfg="both",
        prepend_reference=False,
    )
    unit = torch.from_numpy(normal).permute(0, 3, 1, 2).float() / 255
    maps = map_features(pipe, {"normal": unit}, unit=True)
    expected = reference_latents(
        pipe, 2, [[0, 1]], [], prepend_reference=False, cond_features=pose_features(pipe, poses),
        shared_features=maps,
    )  # fmt: skip
    close(out, expected)


@pytest.mark.parametrize(
    ("config_mode", "call_mode", "used"),
    [("once", None, "once"), ("dispose", None, "dispose"), ("dispose", "once", "once")],
)
def test_controlnet_residuals_follow_the_residual_mode(config_mode, call_mode, used):
    """The config's residual mode unless the call names one; DisPose's adds each residual to every skip
    collected so far after each down block (4/3/2/1 times), "once" adds each once before the up blocks."""
    pipe = make_pipe(config_mode)
    flows = rand(2, 2, SIZE, SIZE, seed=7) * 4 - 2
    out = run(pipe, dense_flow=flows, residual_mode=call_mode, conditioning_scales={"motion": 0.7})
    sequence_flows = torch.cat([torch.zeros_like(flows[:1]), flows])  # the reference frame: zero flow
    expected = reference_latents(pipe, 2, [[0, 1, 2]], [], flows=sequence_flows, motion_scale=0.7, mode=used)
    close(out[:, :], expected[:, 1:])


@pytest.mark.parametrize("cfg_mode", ["batched", "sequential"])
@pytest.mark.parametrize("controlnet_cfg", ["keep", "drop"])
def test_controlnet_negative_half_keeps_or_drops_the_residuals(pipe, controlnet_cfg, cfg_mode):
    flows = rand(2, 2, SIZE, SIZE, seed=8) * 4 - 2
    trajectories = rand(2, 2, SIZE, SIZE, seed=18) * 2 - 1
    out = run(
        pipe,
        dense_flow=flows.permute(0, 2, 3, 1).numpy(),
        trajectory_flow=trajectories,
        controlnet_cfg=controlnet_cfg,
        prepend_reference=False,
        cfg_mode=cfg_mode,
    )
    expected = reference_latents(
        pipe, 2, [[0, 1]], [], prepend_reference=False, flows=flows, trajectories=trajectories,
        controlnet_cfg=controlnet_cfg,
    )  # fmt: skip
    close(out, expected)


def test_points_are_sampled_at_the_reference_and_placed_where_both_scores_reach_the_threshold(pipe):
    """Default point rules: the embedding is a bilinear sample of the features at the reference keypoint; a
    point is placed (x / W, y / H) where its score and the reference's reach the threshold (0.3 counts)."""
    features = rand(1, 4, 4, 4, seed=9)
    reference = torch.tensor([[4.0, 8.0, 0.9], [12.0, 2.0, 0.3], [6.0, 6.0, 0.1]])
    keypoints = torch.tensor(
        [
            [[5.0, 9.0, 0.3], [11.0, 3.0, 0.8], [7.0, 7.0, 0.9]],
            [[3.0, 10.0, 0.29], [13.0, 1.0, 0.5], [8.0, 8.0, 1.0]],
        ]
    )
    out = run(
        pipe,
        point_features=features,
        keypoints=keypoints,
        reference_keypoints=reference,
        prepend_reference=False,
    )
    size = torch.tensor([SIZE, SIZE], dtype=torch.float32)
    positions = keypoints[..., :2] / size
    visible = torch.tensor([[True, True, False], [False, True, False]])
    embeddings = PointAdapter.sample_reference(features, reference[:, :2] / size)
    points = {"embeddings": embeddings, "positions": positions, "visible": visible}
    expected = reference_latents(pipe, 2, [[0, 1]], [], prepend_reference=False, points=points)
    close(out, expected)


# --- decode and outputs ---------------------------------------------------------------------------------


def vae_frames(pipe, latents: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """(F, 4, h, w) latents -> (F, 3, H, W) in [0, 1], decoded ``chunks`` frames per VAE call."""
    out, start = [], 0
    with torch.no_grad():
        for n in chunks:
            part = latents[start : start + n] / pipe.vae.config.scaling_factor
            out.append(pipe.vae.decode(part, num_frames=n).sample)
            start += n
    return (torch.cat(out) / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize(("chunk", "chunks"), [(None, [3]), (2, [2, 1]), (1, [1, 1, 1])])
def test_frames_are_the_vae_decode_of_the_latents_chunk_by_chunk(pipe, chunk, chunks):
    """The temporal decoder mixes the frames of a chunk, so the chunking is visible in the frames."""
    latents = run(pipe, num_frames=3, max_guidance_scale=1.0)
    frames = run(pipe, num_frames=3, max_guidance_scale=1.0, output_type="pt", decode_chunk_size=chunk)
    close(frames[0], vae_frames(pipe, latents[0], chunks), atol=1e-5)
    assert frames.shape == (1, 3, 3, SIZE, SIZE)


def test_decode_reference_decodes_the_reference_frame_in_the_first_chunk_then_drops_it(pipe):
    kwargs = {"num_frames": 3, "max_guidance_scale": 1.0}
    latents = run(pipe, keep_reference=True, **kwargs)  # (1, 4, ...): the reference first
    assert latents.shape == (1, 4, 4, LATENT, LATENT)
    assert torch.equal(run(pipe, **kwargs), latents[:, 1:])
    whole = run(pipe, output_type="pt", decode_reference=True, **kwargs)
    close(whole[0], vae_frames(pipe, latents[0], [4])[1:], atol=1e-5)
    chunked = run(pipe, output_type="pt", decode_reference=True, decode_chunk_size=3, **kwargs)
    close(chunked[0], vae_frames(pipe, latents[0], [3, 1])[1:], atol=1e-5)
    # without a prepended reference there is nothing to decode with the video
    plain = run(pipe, output_type="pt", decode_reference=True, prepend_reference=False, **kwargs)
    lat = run(pipe, prepend_reference=False, **kwargs)
    close(plain[0], vae_frames(pipe, lat[0], [3]), atol=1e-5)


def test_output_types_and_return_dict(pipe):
    kwargs = {"num_frames": 2, "max_guidance_scale": 1.0}
    pt = run(pipe, output_type="pt", **kwargs)
    np_frames = run(pipe, output_type="np", **kwargs)
    assert isinstance(np_frames, np.ndarray) and np_frames.shape == (1, 2, SIZE, SIZE, 3)
    np.testing.assert_allclose(np_frames[0], pt[0].permute(0, 2, 3, 1).numpy(), atol=1e-6)
    pil = run(pipe, output_type="pil", **kwargs)
    assert len(pil) == 1 and [im.size for im in pil[0]] == [(SIZE, SIZE)] * 2
    np.testing.assert_array_equal(np.asarray(pil[0][1]), (np_frames[0, 1] * 255).round().astype(np.uint8))
    as_tuple = pipe(
        rand(1, 3, SIZE, SIZE, seed=0), height=SIZE, width=SIZE, sigmas=SIGMAS, num_inference_steps=None,
        generator=torch.Generator().manual_seed(0), output_type="pt", return_dict=False,
        noise_aug_strength=0.02, min_guidance_scale=1.0, **kwargs,
    )  # fmt: skip
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and torch.equal(as_tuple[0], pt)


@pytest.mark.parametrize(("output_type", "decode_reference"), [("np", False), ("pt", True)])
def test_decode_stream_yields_the_chunks_of_the_decoded_video(pipe, output_type, decode_reference):
    latents = run(pipe, num_frames=3, max_guidance_scale=1.0, keep_reference=True)
    chunks = list(
        pipe.decode_stream(
            latents, 2, reference_first=True, decode_reference=decode_reference, output_type=output_type
        )
    )
    if decode_reference:  # chunks [ref, 1], [2, 3]: the reference dropped from the first
        expected = vae_frames(pipe, latents[0], [2, 2])
        assert [len(c) for c in chunks] == [1, 2]
    else:  # chunks [1, 2], [3]
        expected = vae_frames(pipe, latents[0, 1:], [2, 1])
        assert [len(c) for c in chunks] == [2, 1]
    got = torch.cat([torch.as_tensor(c) for c in chunks])
    if output_type == "np":
        got = got.permute(0, 3, 1, 2)
        assert isinstance(chunks[0], np.ndarray)
    close(got, expected[-3:], atol=1e-5)
    plain = list(pipe.decode_stream(latents[:, 1:], 3, output_type="pt"))
    close(plain[0], vae_frames(pipe, latents[0, 1:], [3]), atol=1e-5)


def test_decode_stream_refuses_a_batch_and_other_output_types(pipe):
    latents = torch.zeros(2, 2, 4, LATENT, LATENT)
    with pytest.raises(
        ValueError,
        match=r"^decode_stream takes one video's latents \(1, L, 4, h, w\), got \(2, 2, 4, 8, 8\)$",
    ):
        next(pipe.decode_stream(latents))
    with pytest.raises(ValueError, match=r"^decode_stream takes one video"):
        next(pipe.decode_stream(latents[0]))
    with pytest.raises(ValueError, match=r"^decode_stream's `output_type` must be 'np' or 'pt', got 'pil'$"):
        next(pipe.decode_stream(latents[:1], output_type="pil"))


# --- generator, latents, scheduler, micro-conditioning ---------------------------------------------------


def test_two_videos_per_prompt_each_follow_their_own_latents(pipe):
    initial = torch.randn(2, 3, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(5))
    out = run(pipe, num_frames=2, num_videos_per_prompt=2, latents=initial, keep_reference=True)
    for k in range(2):
        expected = reference_latents(pipe, 2, [[0, 1, 2]], [], initial=initial[k : k + 1])
        close(out[k : k + 1], expected)


def test_a_batch_of_references_with_a_generator_each(pipe):
    images = torch.cat([rand(1, 3, SIZE, SIZE, seed=0), rand(1, 3, SIZE, SIZE, seed=11)])
    generators = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(3)]
    out = run(pipe, image=images, num_frames=2, generator=generators, prepend_reference=False)
    for k, seed in enumerate((0, 3)):
        expected = reference_latents(
            pipe, 2, [[0, 1]], [], image=images[k : k + 1], seed=seed, prepend_reference=False
        )
        close(out[k : k + 1], expected)
    with pytest.raises(ValueError, match=r"^1 generators for an effective batch of 2$"):
        run(pipe, image=images, num_frames=2, generator=generators[:1])


def test_a_pil_reference_equals_the_same_pixels_as_a_tensor(pipe):
    pixels = (rand(SIZE, SIZE, 3, seed=12) * 255).to(torch.uint8)
    tensor = pixels.permute(2, 0, 1)[None].float() / 255
    out = run(pipe, image=PIL.Image.fromarray(pixels.numpy()), num_frames=2, prepend_reference=False)
    close(out, reference_latents(pipe, 2, [[0, 1]], [], image=tensor, prepend_reference=False), atol=1e-4)
    listed = run(pipe, image=[PIL.Image.fromarray(pixels.numpy())], num_frames=2, prepend_reference=False)
    close(listed, out, atol=1e-6)


def test_num_inference_steps_take_the_schedulers_karras_sigmas(pipe):
    scheduler = svd_scheduler()
    scheduler.set_timesteps(2)
    sigmas = [float(s) for s in scheduler.sigmas]
    assert len(sigmas) == 3 and sigmas[0] > 600
    out = run(pipe, num_frames=2, sigmas=None, num_inference_steps=2, prepend_reference=False)
    expected = reference_latents(pipe, 2, [[0, 1]], [], prepend_reference=False, sigmas=sigmas)
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=1e-3)


def test_interrupt_after_the_first_step_returns_its_latents(pipe):
    def stop(pipeline, step, timestep, tensors):
        pipeline._interrupt = True
        return {}

    out = run(pipe, num_frames=2, prepend_reference=False, callback_on_step_end=stop)
    expected = reference_latents(pipe, 2, [[0, 1]], [], prepend_reference=False, sigmas=SIGMAS[:2])
    close(out, expected)


def test_callback_sees_latents_and_noise_pred_and_can_replace_the_latents(pipe):
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append((step, float(timestep), sorted(tensors), tensors["latents"].shape))
        if step == 1:
            return {"latents": torch.full_like(tensors["latents"], 0.5)}
        return {}

    out = run(
        pipe,
        num_frames=2,
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "noise_pred"],
    )
    assert [s[0] for s in seen] == [0, 1]
    assert seen[0][1] == pytest.approx(0.25 * np.log(2.0)) and seen[1][1] == pytest.approx(0.25 * np.log(0.6))
    assert seen[0][2] == ["latents", "noise_pred"] and seen[0][3] == (1, 3, 4, LATENT, LATENT)
    assert pipe.num_timesteps == 2
    assert torch.equal(out, torch.full_like(out, 0.5))
    with pytest.raises(
        ValueError, match=r"^callback tensor inputs \['image_latents'\] not in \['latents', 'noise_pred'\]$"
    ):
        run(
            pipe,
            num_frames=1,
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["image_latents"],
        )


# --- the pieces, by hand ------------------------------------------------------------------------------


def test_tile_frames_name_the_reference_and_the_input_frames():
    assert pa._tile_frames([0, 3, 4, 5], True) == (True, 2, 5)  # sequence frames 3..5 are inputs 2..4
    assert pa._tile_frames([0, 1, 2], True) == (True, 0, 2)
    assert pa._tile_frames([2, 3, 4], True) == (False, 1, 4)  # a tile without the reference
    assert pa._tile_frames([2, 3, 4], False) == (False, 2, 5)
    assert pa._tile_frames([0, 1], False) == (False, 0, 2)
    with pytest.raises(ValueError, match=r"^a tile's frames must be consecutive, got \[0, 2, 4\]$"):
        pa._tile_frames([0, 2, 4], True)
    with pytest.raises(ValueError, match="consecutive"):
        pa._tile_frames([1, 2, 4], False)


def test_prepare_flow_resizes_and_scales_the_vectors_by_the_size_ratio():
    flow = torch.ones(2, 4, 8, 2) * torch.tensor([1.0, 2.0])  # (F, H', W', 2): x 1 px, y 2 px on 8 x 4
    out = AnimationPipeline._prepare_flow(flow, 16, 32, torch.float32)  # to 32 x 16: x * 4, y * 4
    assert out.shape == (2, 2, 16, 32) and out.is_contiguous()
    assert torch.equal(out[:, 0], torch.full((2, 16, 32), 4.0)) and torch.equal(
        out[:, 1], torch.full((2, 16, 32), 8.0)
    )
    wide = AnimationPipeline._prepare_flow(
        flow.permute(0, 3, 1, 2).numpy(), 4, 16, torch.float64
    )  # x * 2, y * 1
    assert wide.dtype == torch.float64 and torch.equal(
        wide[:, 0], torch.full((2, 4, 16), 2.0, dtype=torch.float64)
    )
    assert torch.equal(wide[:, 1], torch.full((2, 4, 16), 2.0, dtype=torch.float64))
    ramp = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 2, 4, 4)
    assert torch.equal(
        AnimationPipeline._prepare_flow(ramp, 4, 4, torch.float32), ramp
    )  # same grid: unchanged
    # a (F, 2, H, 2) flow is read channels-first
    square = torch.arange(16.0).view(2, 2, 2, 2)
    assert torch.equal(AnimationPipeline._prepare_flow(square, 2, 2, torch.float32), square)
    for bad in (torch.zeros(2, 4, 4, 3), torch.zeros(4, 4, 2)):
        with pytest.raises(ValueError, match=r"^a flow must be \(F, H, W, 2\) or \(F, 2, H, W\), got \("):
            AnimationPipeline._prepare_flow(bad, 4, 4, torch.float32)


def _sources(point_rules: str, prepend: bool) -> pa._MotionSources:
    keypoints = np.array(
        [
            [[4.0, 4.0, 0.3], [20.0, 8.0, 0.9], [-2.0, 30.0, 0.9]],
            [[8.0, 12.0, 0.31], [2.0, 2.0, 0.2], [6.0, 6.0, 0.5]],
        ]
    )
    flows = torch.arange(2 * 2 * 2 * 2, dtype=torch.float32).view(2, 2, 2, 2)
    return pa._MotionSources(
        dense_flow=flows, trajectory_flow=None, keypoints=keypoints, embeddings=torch.zeros(1, 3, 4),
        reference_positions=torch.tensor([[0.5, 0.25], [0.1, 0.1], [0.9, 0.9]]),
        reference_visible=torch.tensor([True, False, True]), threshold=0.3, point_rules=point_rules,
        prepend_reference=prepend, prepare_flow=lambda f: torch.as_tensor(f) * 10, size=(16, 8), scale=0.5,
        mode="dispose", cfg="drop",
    )  # fmt: skip


def test_motion_tile_default_rules_slice_the_frames_and_prepend_the_reference():
    tile = _sources("default", True).tile([0, 2])  # the reference, then input frame 1
    flows = torch.arange(16, dtype=torch.float32).view(2, 2, 2, 2) * 10
    assert torch.equal(tile.dense_flow, torch.cat([torch.zeros(1, 2, 2, 2), flows[1:]]))
    assert tile.trajectory_flow is None
    torch.testing.assert_close(
        tile.positions,
        torch.tensor([[[0.5, 0.25], [0.1, 0.1], [0.9, 0.9]], [[0.5, 1.5], [0.125, 0.25], [0.375, 0.75]]]),
    )
    # score >= 0.3 and seen in the reference: frame 1's point 0 (0.31), not point 1 (unseen in the reference)
    assert tile.visible.tolist() == [[True, False, True], [True, False, True]]
    assert (tile.scale, tile.mode, tile.cfg) == (0.5, "dispose", "drop")
    plain = _sources("default", False).tile([0, 1])
    assert torch.equal(plain.dense_flow, flows)
    assert plain.visible.tolist() == [[True, False, True], [True, False, True]]
    torch.testing.assert_close(plain.positions[0], torch.tensor([[0.25, 0.5], [1.25, 1.0], [-0.125, 3.75]]))


def test_motion_tile_dispose_rules_strict_scores_unseen_reference_and_clamp():
    tile = _sources("dispose", False).tile([0, 1])
    # score > 0.3 strictly, the reference's visibility ignored; beyond the right or bottom edge clamped to 1
    assert tile.visible.tolist() == [[False, True, True], [True, False, True]]
    torch.testing.assert_close(tile.positions[0], torch.tensor([[0.25, 0.5], [1.0, 1.0], [-0.125, 1.0]]))
    with_ref = _sources("dispose", True).tile([0, 1])
    assert with_ref.visible.tolist() == [[True, False, True], [False, True, True]]
    torch.testing.assert_close(with_ref.positions[0], torch.tensor([[0.5, 0.25], [0.1, 0.1], [0.9, 0.9]]))


@pytest.mark.parametrize("cache", ["none", "host"])
def test_tile_features_encode_each_window_and_the_reference_once(cache):
    calls = []

    def encode(start, stop):
        calls.append((start, stop))
        frames = torch.arange(start, stop, dtype=torch.float32).view(-1, 1, 1, 1)
        return frames + 100, frames + 200  # (pose, maps) features of input frames start..stop-1

    ref = (torch.full((1, 1, 1, 1), -1.0, dtype=torch.float64), None)  # cast to the features' dtype
    features = pa._TileFeatures(encode, ref, 4, True, "both", cache, torch.device("cpu"))
    for _ in range(2):  # two steps
        pose, maps = features.tile([0, 1, 2])
        assert pose.dtype == maps.dtype == torch.float32
        assert pose.flatten().tolist() == [-1, 100, 101] and maps.flatten().tolist() == [0, 200, 201]
        pose, maps = features.tile([0, 2, 3, 4])
        assert pose.flatten().tolist() == [-1, 101, 102, 103] and maps.flatten().tolist() == [
            0,
            201,
            202,
            203,
        ]
    if cache == "none":
        assert calls == [(0, 2), (1, 4)] * 2
    else:  # each frame once, runs of missing frames only
        assert calls == [(0, 2), (2, 4)]
    cond = pa._TileFeatures(encode, (None, None), 4, False, "cond", cache, torch.device("cpu"))
    summed, shared = cond.tile([1, 2])
    assert shared is None and summed.flatten().tolist() == [302, 304]


def test_tile_features_without_any_part_give_nothing():
    features = pa._TileFeatures(lambda a, b: (None, None), (None, None), 3, False, "cond", "host", "cpu")
    assert features.tile([0, 1]) == (None, None)
    only_pose = pa._TileFeatures(
        lambda a, b: (torch.ones(b - a, 1, 1, 1), None), (None, None), 3, True, "cond", "host", "cpu"
    )
    pose, maps = only_pose.tile([0, 1, 2])
    assert maps is None and pose.flatten().tolist() == [0, 1, 1]


def test_all_reduce_of_host_sums_over_nccl_goes_chunk_by_chunk():
    class Doubling(TileGroup):
        def all_reduce(self, *tensors):  # two ranks holding the same sums
            self.seen.append([tuple(t.shape) for t in tensors])
            for tensor in tensors:
                tensor.mul_(2)

    sums, weights = torch.arange(2 * 5, dtype=torch.float32).view(1, 5, 2), torch.ones(5)
    group = Doubling(0, 2, backend="nccl")
    object.__setattr__(group, "seen", [])
    pa._all_reduce_sums(group, torch.device("cpu"), 2, sums, weights)
    assert group.seen == [[(1, 2, 2)], [(1, 2, 2)], [(1, 1, 2)], [(5,)]]
    assert torch.equal(sums, 2 * torch.arange(10.0).view(1, 5, 2)) and torch.equal(
        weights, torch.full((5,), 2.0)
    )
    gloo = Doubling(0, 2, backend="gloo")
    object.__setattr__(gloo, "seen", [])
    pa._all_reduce_sums(gloo, torch.device("cpu"), 2, sums, weights)
    assert gloo.seen == [[(1, 5, 2), (5,)]] and torch.equal(weights, torch.full((5,), 4.0))

    class OnGpu(torch.Tensor):  # sums that report a CUDA device: NCCL reduces them whole, in place
        @property
        def device(self):
            return torch.device("cuda")

    direct = Doubling(0, 2, backend="nccl")
    object.__setattr__(direct, "seen", [])
    on_gpu = torch.arange(10.0).view(1, 5, 2).as_subclass(OnGpu)
    pa._all_reduce_sums(direct, torch.device("cpu"), 2, on_gpu, torch.ones(5))
    assert direct.seen == [[(1, 5, 2), (5,)]] and torch.equal(on_gpu, 2 * torch.arange(10.0).view(1, 5, 2))


def test_one_rank_tile_group_gives_the_latents_of_no_group(pipe):
    class One(TileGroup):
        def all_reduce(self, *tensors):
            pass

    poses = rand(4, 3, SIZE, SIZE, seed=1)
    kwargs = {"pose_images": poses, "tile_size": 3, "tile_overlap": 2, "max_guidance_scale": 1.0}
    expected = run(pipe, **kwargs)
    assert torch.equal(run(pipe, tile_group=One(0, 1, backend="gloo"), **kwargs), expected)
    half = run(pipe, tile_group=One(1, 2, backend="gloo"), **kwargs)  # rank 1 of 2 alone: only tile [0, 2, 3]
    assert not torch.equal(half, expected)


def _refuses(pipe, message: str, **kwargs) -> None:
    with pytest.raises(ValueError, match=message):
        run(pipe, **({"num_frames": 1} | kwargs))


def test_argument_checks_and_their_messages(pipe):
    _refuses(
        pipe,
        r"^`image` must be a torch.Tensor, PIL.Image.Image or list of them, got <class 'numpy.ndarray'>$",
        image=np.zeros((SIZE, SIZE, 3)),
    )
    _refuses(pipe, r"^`height` and `width` must be divisible by 8, got 12 and 16$", height=12)
    _refuses(pipe, r"^`height` and `width` must be divisible by 8, got 16 and 20$", width=20)
    _refuses(
        pipe, r"^`cfg_mode` must be one of \('batched', 'sequential'\), got 'parallel'$", cfg_mode="parallel"
    )
    _refuses(
        pipe, r"^`output_type` must be one of \('pil', 'np', 'pt', 'latent'\), got 'gif'$", output_type="gif"
    )
    _refuses(
        pipe,
        r"^need tile_size >= 1 and 0 <= tile_overlap < tile_size, got 0, 0$",
        tile_size=0,
        tile_overlap=0,
    )
    _refuses(
        pipe,
        r"^need tile_size >= 1 and 0 <= tile_overlap < tile_size, got 3, 3$",
        tile_size=3,
        tile_overlap=3,
    )
    _refuses(
        pipe,
        r"^need tile_size >= 1 and 0 <= tile_overlap < tile_size, got 3, -1$",
        tile_size=3,
        tile_overlap=-1,
    )
    _refuses(
        pipe,
        r"^unknown conditioning scales \['albedo'\]; known: \['depth', 'motion', 'normal', 'pose'\]$",
        conditioning_scales={"albedo": 1.0, "depth": 1.0},
    )
    no_controlnet = make_pipe(motion_controlnet=None, guidance_encoders=None)
    _refuses(
        no_controlnet,
        r"^unknown conditioning scales \['motion'\]; known: \['pose'\]$",
        conditioning_scales={"motion": 1},
    )
    _refuses(
        no_controlnet,
        r"^`guidance_maps` given but the pipeline has no `guidance_encoders`$",
        guidance_maps={"depth": rand(1, 3, SIZE, SIZE, seed=1)},
    )
    _refuses(
        no_controlnet,
        r"^dense_flow, point_features given but the pipeline has no `motion_controlnet`$",
        dense_flow=torch.zeros(1, 2, SIZE, SIZE),
        point_features=torch.zeros(1, 4, 2, 2),
        keypoints=np.zeros((1, 1, 3)),
        reference_keypoints=np.zeros((1, 3)),
    )
    _refuses(no_controlnet, r"^trajectory_flow given", trajectory_flow=torch.zeros(1, 2, SIZE, SIZE))
    for name, value in (
        ("temporal_context", "per_pixel"), ("point_rules", "upstream"), ("guidance_range", "byte"),
        ("guidance_cfg", "uncond"), ("feature_cache", "disk"),
    ):  # fmt: skip
        allowed = {
            "temporal_context": r"\('per_video', 'diffusers_0.27'\)", "point_rules": r"\('default', 'dispose'\)",
            "guidance_range": r"\('signed', 'unit'\)", "guidance_cfg": r"\('cond', 'both'\)",
            "feature_cache": r"\('none', 'host'\)",
        }[name]  # fmt: skip
        _refuses(pipe, rf"^`{name}` must be one of {allowed}, got '{value}'$", **{name: value})
    _refuses(pipe, r"^`controlnet_cfg` must be one of \('keep', 'drop'\), got 'both'$", controlnet_cfg="both")
    _refuses(
        pipe, r"^`residual_mode` must be one of \('once', 'dispose'\), got 'twice'$", residual_mode="twice"
    )
    _refuses(pipe, r"^num_frames must be >= 1, got 0$", num_frames=0)
    _refuses(
        pipe, r"^callback tensor inputs \['x'\] not in", callback_on_step_end_tensor_inputs=["latents", "x"]
    )


def test_length_checks(pipe):
    poses, depth = rand(2, 3, SIZE, SIZE, seed=1), rand(3, 3, SIZE, SIZE, seed=2)
    message = r"^pose images, guidance maps, flows and keypoints differ in length: \[2, 3\]$"
    _refuses(pipe, message, num_frames=None, pose_images=poses, guidance_maps={"depth": depth})
    _refuses(pipe, message, num_frames=None, pose_images=poses, dense_flow=torch.zeros(3, 2, SIZE, SIZE))
    _refuses(pipe, message, num_frames=None, pose_images=poses, trajectory_flow=torch.zeros(3, 2, SIZE, SIZE))
    points = {"point_features": torch.zeros(1, 4, 2, 2), "reference_keypoints": np.zeros((1, 3))}
    _refuses(pipe, message, num_frames=None, pose_images=poses, keypoints=np.zeros((3, 1, 3)), **points)
    _refuses(pipe, r"^num_frames=3 but the guidance has 2 frames$", num_frames=3, pose_images=poses)
    # keypoints without point features are not per-frame inputs; without anything the UNet's config decides
    assert run(pipe, num_frames=None, keypoints=np.zeros((5, 1, 3)), max_guidance_scale=1.0).shape[1] == 2
    assert run(pipe, num_frames=None, pose_images=poses[:1], max_guidance_scale=1.0).shape[1] == 1


def test_motion_input_checks(pipe):
    flow = torch.zeros(1, 2, SIZE, SIZE)
    features = torch.zeros(1, 4, 2, 2)
    _refuses(
        pipe,
        r"^`point_features` need `keypoints` and `reference_keypoints`$",
        point_features=features,
        keypoints=np.zeros((1, 2, 3)),
    )
    _refuses(pipe, r"^`point_features` need", point_features=features, reference_keypoints=np.zeros((2, 3)))
    shape = (
        r"^`keypoints` must be \(F, K, 3\) and `reference_keypoints` \(K, 3\), got \(1, 2, 3\) and \(3, 3\)$"
    )
    _refuses(
        pipe,
        shape,
        point_features=features,
        keypoints=np.zeros((1, 2, 3)),
        reference_keypoints=np.zeros((3, 3)),
    )
    _refuses(
        pipe,
        r"got \(1, 2, 2\) and \(2, 2\)$",
        point_features=features,
        keypoints=np.zeros((1, 2, 2)),
        reference_keypoints=np.zeros((2, 2)),
    )
    _refuses(
        pipe,
        r"got \(1, 2\) and \(2,\)$",
        point_features=features,
        keypoints=np.zeros((1, 2)),
        reference_keypoints=np.zeros(2),
    )
    _refuses(
        pipe, r"^`point_features` have 5 channels, the point adapter takes 4$",
        point_features=torch.zeros(1, 5, 2, 2), keypoints=np.zeros((1, 2, 3)), reference_keypoints=np.zeros((2, 3)),
    )  # fmt: skip
    components = micro_components()
    coarse = MotionControlNet.from_unet(
        components["unet"],
        conditioning_embedding_out_channels=(4, 4, 4),
        point_embedding_channels=4,
        point_mid_channels=4,
    )
    message = r"^motion_controlnet's flow branches downsample by 4, the VAE by 2$"
    _refuses(make_pipe(motion_controlnet=coarse), message, dense_flow=flow)
    # points alone do not go through the flow branches
    run(make_pipe(motion_controlnet=coarse), **_point_inputs(1), max_guidance_scale=1.0)
    other = UNetSpatioTemporalConditionModel(
        sample_size=LATENT, block_out_channels=(32, 32), layers_per_block=2, cross_attention_dim=8,
        down_block_types=("DownBlockSpatioTemporal",) * 2, up_block_types=("UpBlockSpatioTemporal",) * 2,
        num_attention_heads=(1, 1), projection_class_embeddings_input_dim=12, addition_time_embed_dim=4,
    )  # fmt: skip
    deeper = MotionControlNet.from_unet(other, conditioning_embedding_out_channels=(4, 4))
    _refuses(
        make_pipe(motion_controlnet=deeper),
        r"^motion_controlnet has 6 skip residuals, the UNet 4 skips$",
        dense_flow=flow,
    )


def _point_inputs(frames: int) -> dict:
    return {
        "point_features": torch.zeros(1, 4, 2, 2),
        "keypoints": np.zeros((frames, 2, 3)),
        "reference_keypoints": np.zeros((2, 3)),
    }


def test_guider_and_encoder_sizes_are_checked_only_when_used(pipe):
    wide = PoseGuider(block_out_channels=(4, 4), out_channels=16)
    deep = PoseGuider(block_out_channels=(4, 4, 4), out_channels=64)
    run(make_pipe(pose_guider=deep), num_frames=1, max_guidance_scale=1.0)  # unused: not in the way
    _refuses(
        make_pipe(pose_guider=deep),
        r"^pose_guider downsamples by 4, the VAE by 2$",
        pose_images=rand(1, 3, SIZE, SIZE, seed=1),
    )
    _refuses(
        make_pipe(pose_guider=deep),
        r"^pose_guider downsamples",
        reference_pose_image=rand(1, 3, SIZE, SIZE, seed=1),
    )
    _refuses(
        make_pipe(pose_guider=wide),
        r"^pose_guider outputs 16 channels, the UNet's conv_in 64$",
        pose_images=rand(1, 3, SIZE, SIZE, seed=1),
    )
    encoders = GuidanceFusion(
        guidance_types=("depth",),
        block_out_channels=(4, 4, 4),
        out_channels=64,
        attention_num_heads=1,
        attention_norm_num_groups=4,
    )
    _refuses(
        make_pipe(guidance_encoders=encoders),
        r"^guidance_encoders downsamples by 4, the VAE by 2$",
        guidance_maps={"depth": rand(1, 3, SIZE, SIZE, seed=1)},
    )


@pytest.mark.parametrize("feature_cache", ["none", "host"])
def test_reference_maps_condition_the_prepended_frame_and_a_zero_pose_scale_drops_the_pose(
    pipe, feature_cache
):
    poses, depth, normal = (rand(3, 3, SIZE, SIZE, seed=s) for s in (20, 21, 22))
    ref_depth, ref_normal = rand(1, 3, SIZE, SIZE, seed=23), rand(1, 3, SIZE, SIZE, seed=24)
    scales = {"pose": 0.0, "normal": 0.5}
    out = run(
        pipe,
        pose_images=poses,
        reference_pose_image=poses[:1],
        guidance_maps={"depth": depth, "normal": normal},
        reference_guidance_maps={"depth": torch.cat([ref_depth, depth[:1]]), "normal": ref_normal},
        conditioning_scales=scales,
        tile_size=3,
        tile_overlap=1,
        feature_cache=feature_cache,
        keep_reference=True,
    )
    maps = map_features(
        pipe, {"depth": torch.cat([ref_depth, depth]), "normal": torch.cat([ref_normal, normal])}, scales
    )
    expected = reference_latents(pipe, 3, [[0, 1, 2], [0, 2, 3]], [1 / 3, 1.0, 1 / 3], cond_features=maps)
    close(out, expected)


def test_map_scales_of_zero_everywhere_equal_no_maps(pipe):
    kwargs = {"num_frames": 2, "max_guidance_scale": 1.0}
    maps = {"depth": rand(2, 3, SIZE, SIZE, seed=25)}
    plain = run(pipe, **kwargs)
    assert torch.equal(run(pipe, guidance_maps=maps, conditioning_scales={"depth": 0.0}, **kwargs), plain)
    assert torch.equal(
        run(pipe, dense_flow=torch.ones(2, 2, SIZE, SIZE), conditioning_scales={"motion": 0}, **kwargs), plain
    )
    assert not torch.equal(run(pipe, guidance_maps=maps, **kwargs), plain)


def test_condition_frames_in_every_form_reach_the_modules_in_minus_one_to_one(pipe):
    pixels = (rand(2, SIZE, SIZE, 3, seed=26) * 255).round()
    expected = (pixels / 255 * 2 - 1).permute(0, 3, 1, 2)
    forms = [
        pixels.numpy().astype(np.uint8),
        pixels.numpy() / 255,
        pixels.permute(0, 3, 1, 2) / 255,
        [PIL.Image.fromarray(p) for p in pixels.numpy().astype(np.uint8)],
    ]
    for form in forms:
        out = pipe._prepare_condition_frames(form, SIZE, SIZE, "cpu", torch.float32)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    single = [
        pixels[0].numpy().astype(np.uint8),
        pixels[0].permute(2, 0, 1) / 255,
        PIL.Image.fromarray(pixels[0].numpy().astype(np.uint8)),
    ]
    for form in single:
        out = pipe._prepare_condition_frames(form, SIZE, SIZE, "cpu", torch.float64)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, expected[:1].double(), atol=1e-6, rtol=0)
    unit = pipe._prepare_condition_frames(
        pixels.numpy().astype(np.uint8), SIZE, SIZE, "cpu", torch.float32, unit=True
    )
    torch.testing.assert_close(unit, (pixels / 255).permute(0, 3, 1, 2), atol=1e-6, rtol=0)


def test_guider_and_encoders_run_on_chunks_of_16_frames_like_on_each_frame(pipe):
    poses = rand(18, 3, SIZE, SIZE, seed=27) * 2 - 1
    calls = []
    handle = pipe.pose_guider.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    try:
        chunked = pipe._run_chunked(pipe.pose_guider, poses)
    finally:
        handle.remove()
    assert calls == [16, 2]
    # keyword arguments reach every chunk's call
    torch.testing.assert_close(pipe._run_chunked(torch.mul, poses, other=2.0), poses * 2, atol=0, rtol=0)
    with torch.no_grad():
        each = torch.cat([pipe.pose_guider(poses[i : i + 1]) for i in range(18)])
    torch.testing.assert_close(chunked, each, atol=1e-6, rtol=0)
    fused = pipe._fused_chunked({"depth": poses, "normal": poses.flip(0)}, {"normal": 2.0})
    with torch.no_grad():
        each = torch.cat(
            [
                pipe.guidance_encoders(
                    {"depth": poses[i : i + 1], "normal": poses.flip(0)[i : i + 1]}, {"normal": 2.0}
                )
                for i in range(18)
            ]
        )
    torch.testing.assert_close(fused, each, atol=1e-5, rtol=0)
    assert pipe._fused_chunked({"depth": poses}, {"depth": 0.0}) is None


def test_prepare_latents_draws_periodic_noise_and_checks_given_latents(pipe):
    pipe.scheduler.set_timesteps(sigmas=SIGMAS)
    sigma0 = (SIGMAS[0] ** 2 + 1) ** 0.5
    shape = (1, 5, 4, LATENT, LATENT)
    period = torch.randn((1, 2, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(4))
    periodic = pipe.prepare_latents(
        1, 5, 8, SIZE, SIZE, torch.float32, "cpu", torch.Generator().manual_seed(4), noise_period=2
    )
    torch.testing.assert_close(periodic, period[:, [0, 1, 0, 1, 0]] * sigma0)
    double = pipe.prepare_latents(1, 5, 8, SIZE, SIZE, torch.float64, "cpu", None, noise_period=2)
    assert double.dtype == torch.float64  # drawn in the pipeline's dtype (fp16 on a GPU)
    fresh = pipe.prepare_latents(1, 5, 8, SIZE, SIZE, torch.float32, "cpu", torch.Generator().manual_seed(4))
    torch.testing.assert_close(fresh, torch.randn(shape, generator=torch.Generator().manual_seed(4)) * sigma0)
    given = torch.ones(shape, dtype=torch.float64)
    out = pipe.prepare_latents(1, 5, 8, SIZE, SIZE, torch.float32, "cpu", None, given, noise_period=2)
    assert out.dtype == torch.float32 and torch.allclose(out, torch.full(shape, sigma0))
    with pytest.raises(
        ValueError, match=r"^`latents` must have shape \(1, 5, 4, 8, 8\), got \(1, 4, 4, 8, 8\)$"
    ):
        pipe.prepare_latents(
            1, 5, 8, SIZE, SIZE, torch.float32, "cpu", None, torch.ones(1, 4, 4, LATENT, LATENT)
        )


def test_periodic_noise_repeats_the_first_tile_of_noise(pipe):
    """``periodic_noise``: ``tile_size`` frames drawn after the augmentation noise, repeated along the
    sequence (reference frame included)."""
    generator = torch.Generator().manual_seed(0)
    torch.randn((1, 3, SIZE, SIZE), generator=generator)  # the augmentation noise comes first
    period = torch.randn((1, 3, 4, LATENT, LATENT), generator=generator)
    initial = period[:, [0, 1, 2, 0, 1]]
    out = run(
        pipe,
        num_frames=4,
        tile_size=3,
        tile_overlap=2,
        periodic_noise=True,
        max_guidance_scale=1.0,
        keep_reference=True,
    )
    tiles = [[0, 1, 2], [0, 2, 3], [0, 3, 4]]
    close(out, reference_latents(pipe, 4, tiles, [1 / 3, 1.0, 1 / 3], initial=initial, max_scale=1.0))


def test_a_pipeline_built_without_a_vae_assumes_svds_factor_of_8():
    assert AnimationPipeline(**(micro_components() | {"vae": None})).vae_scale_factor == 8


def test_default_size_is_the_unets_sample_size_times_the_vae_factor(pipe):
    out = run(pipe, height=None, width=None, num_frames=1, max_guidance_scale=1.0)
    assert out.shape == (1, 1, 4, LATENT, LATENT)


def test_added_time_ids_must_fit_the_unet():
    unet = UNetSpatioTemporalConditionModel(
        sample_size=LATENT, block_out_channels=(32, 32), layers_per_block=1, cross_attention_dim=8,
        down_block_types=("DownBlockSpatioTemporal",) * 2, up_block_types=("UpBlockSpatioTemporal",) * 2,
        num_attention_heads=(1, 1), projection_class_embeddings_input_dim=16, addition_time_embed_dim=4,
    )  # fmt: skip
    pipe = make_pipe(unet=unet, motion_controlnet=None)
    with pytest.raises(
        ValueError, match=r"^the UNet expects 16 added time features; its config does not fit SVD's 3 ids$"
    ):
        pipe._get_add_time_ids(7, 127, 0.0, torch.float32, 1, True)
    ids = make_pipe()._get_add_time_ids(6, 30, 0.5, torch.float64, 2, True)
    assert ids.dtype == torch.float64 and ids.tolist() == [[6, 30, 0.5]] * 4
    assert make_pipe()._get_add_time_ids(6, 30, 0.5, torch.float32, 1, False).tolist() == [[6, 30, 0.5]]


class _Calls:
    """The UNet's calls (inputs and output) during ``with``; the hooks go at exit."""

    def __init__(self, unet):
        self.unet, self.calls = unet, []

    def __enter__(self):
        def before(module, args, kwargs):
            self.calls.append(
                {
                    "args": [a.clone() for a in args[:2]],
                    "kwargs": {k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)},
                }
            )

        def after(module, args, kwargs, output):
            self.calls[-1]["output"] = output[0].clone()

        self.handles = [
            self.unet.register_forward_pre_hook(before, with_kwargs=True),
            self.unet.register_forward_hook(after, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def plain(self, call):
        with torch.no_grad():
            return self.unet(*call["args"], **call["kwargs"], return_dict=False)[0]


def _identity_pipe() -> AnimationPipeline:
    from controlnets import IdentityAdapter

    components = micro_components()
    torch.manual_seed(3)
    adapter = IdentityAdapter.for_unet(components["unet"], embedding_dim=4, num_tokens=2)
    adapter.reinitialize_output(std=0.5, generator=torch.Generator().manual_seed(3))
    return make_pipe(identity_adapter=adapter.eval())


@pytest.mark.parametrize("cfg_mode", ["batched", "sequential", "none"])
def test_identity_tokens_reach_only_the_conditional_rows(cfg_mode):
    pipe = _identity_pipe()
    face = rand(4, seed=30)
    kwargs = {"num_frames": 2, "face_embedding": face}
    if cfg_mode == "none":
        kwargs["max_guidance_scale"] = 1.0
    else:
        kwargs["cfg_mode"] = cfg_mode
    with _Calls(pipe.unet) as calls:
        run(pipe, **kwargs)
    call = calls.calls[0]
    plain = calls.plain(call)
    if cfg_mode == "batched":  # rows: the unconditional video, then the conditional one
        torch.testing.assert_close(call["output"][:1], plain[:1], atol=1e-6, rtol=0)
        assert (call["output"][1:] - plain[1:]).abs().max() > 1e-3
    elif cfg_mode == "sequential":  # the first call is the unconditional half, the second the conditional
        torch.testing.assert_close(call["output"], plain, atol=1e-6, rtol=0)
        second = calls.calls[1]
        assert (second["output"] - calls.plain(second)).abs().max() > 1e-3
    else:
        assert (call["output"] - plain).abs().max() > 1e-3
    # a 1-d embedding is one row; scale 0 or no embedding is no adapter
    with_row = run(pipe, **(kwargs | {"face_embedding": face[None].numpy()}))
    torch.testing.assert_close(run(pipe, **kwargs), with_row, atol=1e-6, rtol=0)
    plain_run = run(pipe, **{k: v for k, v in kwargs.items() if k != "face_embedding"})
    assert torch.equal(run(pipe, **kwargs, identity_scale=0.0), plain_run)
    assert not torch.equal(with_row, plain_run)


def test_identity_embedding_shapes_are_checked():
    pipe = _identity_pipe()
    for bad in (torch.zeros(3, 4), torch.zeros(1, 1, 4)):
        with pytest.raises(ValueError, match=r"^face_embedding must be \(E,\) or \(1 or 2, E\), got \("):
            run(pipe, image=rand(2, 3, SIZE, SIZE, seed=0), num_frames=1, face_embedding=bad)
    two = run(
        pipe,
        image=rand(2, 3, SIZE, SIZE, seed=0),
        num_frames=1,
        face_embedding=rand(2, 4, seed=31),
        max_guidance_scale=1.0,
    )
    assert two.shape == (2, 1, 4, LATENT, LATENT)
    # without an adapter a face embedding is ignored
    assert torch.equal(
        run(make_pipe(), num_frames=1, face_embedding=torch.zeros(3, 4)), run(make_pipe(), num_frames=1)
    )


def test_decode_latents_default_chunk_is_14_frames_and_a_compiled_vae_gets_num_frames(pipe):
    latents = torch.randn(1, 15, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(32))
    video = pipe.decode_latents(latents, 15)  # (1, 3, F, H, W) in [-1, 1]
    assert video.shape == (1, 3, 15, SIZE, SIZE) and video.dtype == torch.float32
    expected = vae_frames(pipe, latents[0], [14, 1])
    torch.testing.assert_close(
        (video[0].permute(1, 0, 2, 3) / 2 + 0.5).clamp(0, 1), expected, atol=1e-5, rtol=0
    )
    compiled = make_pipe(vae=torch.compile(pipe.vae, backend="eager"))  # an OptimizedModule has no len()
    assert compiled.vae_scale_factor == 2
    frames = compiled.decode_latents(
        latents[:, :3], 3, 3
    )  # decode itself runs eagerly; forward's signature counts
    torch.testing.assert_close(
        (frames[0].permute(1, 0, 2, 3) / 2 + 0.5).clamp(0, 1),
        vae_frames(pipe, latents[0, :3], [3]),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize("unit", [False, True])
def test_condition_frames_of_another_size_are_resized(pipe, unit):
    colours = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.4]]).view(2, 3, 1, 1)
    big = colours.expand(2, 3, 2 * SIZE, 3 * SIZE)  # constant frames: resizing keeps every value
    out = pipe._prepare_condition_frames(big, SIZE, SIZE, "cpu", torch.float32, unit=unit)
    expected = colours.expand(2, 3, SIZE, SIZE) * (1 if unit else 2) - (0 if unit else 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg_mode", ["batched", "sequential"])
def test_diffusers_027_time_context_pairs_rows_as_one_batched_call_of_both_halves(pipe, cfg_mode):
    """Under diffusers 0.27's context the halves see each other's CLIP token (pixel p: video p mod 2) in the
    UNet and the ControlNet; a sequential run must pair its rows as the batched call would."""
    flows = rand(2, 2, SIZE, SIZE, seed=40) * 4 - 2
    common = {"dense_flow": flows, "prepend_reference": False}
    out = run(pipe, temporal_context="diffusers_0.27", cfg_mode=cfg_mode, **common)
    expected = reference_latents(
        pipe, 2, [[0, 1]], [], prepend_reference=False, flows=flows, temporal_027=True
    )
    close(out, expected)
    assert (run(pipe, **common) - expected).abs().max() > 1e-3  # the pairing matters here


def test_condition_frames_of_another_size_in_a_run(pipe):
    """Pose images and maps of any size are resized to the output's: constant frames at 32 x 48 act as
    the same colours at 16 x 16."""
    colours = rand(2, 3, 1, 1, seed=41)
    kwargs = {"max_guidance_scale": 1.0, "prepend_reference": False}
    small = run(
        pipe,
        pose_images=colours.expand(2, 3, SIZE, SIZE),
        guidance_maps={"depth": colours.expand(2, 3, SIZE, SIZE)},
        **kwargs,
    )
    big = colours.expand(2, 3, 2 * SIZE, 3 * SIZE)
    close(run(pipe, pose_images=big, guidance_maps={"depth": big}, **kwargs), small, atol=1e-5)
    close(
        run(pipe, guidance_maps={"normal": big}, guidance_range="unit", **kwargs),
        run(
            pipe, guidance_maps={"normal": colours.expand(2, 3, SIZE, SIZE)}, guidance_range="unit", **kwargs
        ),
        atol=1e-5,
    )


def _count_calls(module) -> tuple[list, object]:
    calls = []
    return calls, module.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))


@pytest.mark.parametrize(("cache", "expected"), [("none", [2, 2, 2, 2]), ("host", [2, 1])])
def test_feature_cache_decides_how_often_frames_are_encoded(pipe, cache, expected):
    """3 frames + the reference in tiles [0, 1, 2], [0, 2, 3], two steps: "none" encodes each tile's frames
    every step (2 frames a tile), "host" each frame once (frames 1-2, then 3)."""
    calls, handle = _count_calls(pipe.pose_guider)
    try:
        run(
            pipe,
            pose_images=rand(3, 3, SIZE, SIZE, seed=42),
            tile_size=3,
            tile_overlap=2,
            feature_cache=cache,
        )
    finally:
        handle.remove()
    assert calls == expected


def test_a_zero_motion_scale_runs_no_controlnet(pipe):
    calls, handle = _count_calls(pipe.motion_controlnet)
    try:
        run(pipe, num_frames=2, dense_flow=torch.ones(2, 2, SIZE, SIZE), conditioning_scales={"motion": 0.0})
        assert calls == []
        run(pipe, num_frames=2, dense_flow=torch.ones(2, 2, SIZE, SIZE), max_guidance_scale=1.0)
        assert calls == [1, 1]  # one call per step
    finally:
        handle.remove()


def test_prepare_motion_samples_reads_and_repeats_the_reference_points(pipe):
    features = rand(4, 4, 4, seed=43)  # (E, h, w): one map for every video
    reference = np.array([[4.0, 8.0, 0.9], [12.0, 2.0, 0.3], [6.0, 6.0, 0.1]])
    keypoints = np.zeros((2, 3, 3))
    common = dict(dense_flow=None, trajectory_flow=None, keypoints=keypoints, reference_keypoints=reference,
                  keypoint_threshold=0.3, scale=0.5, residual_mode=None, controlnet_cfg="keep",
                  prepend_reference=True, height=SIZE, width=SIZE, device=torch.device("cpu"))  # fmt: skip
    motion = pipe._prepare_motion(point_features=features, batch_size=2, num_videos_per_prompt=3, **common)
    positions = torch.tensor([[0.25, 0.5], [0.75, 0.125], [0.375, 0.375]])
    sampled = PointAdapter.sample_reference(features[None], positions)
    assert motion.embeddings.shape == (6, 3, 4)
    torch.testing.assert_close(motion.embeddings, sampled.expand(6, -1, -1))
    torch.testing.assert_close(motion.reference_positions, positions)
    assert motion.reference_visible.tolist() == [True, True, False]  # >= 0.3
    assert (motion.scale, motion.mode, motion.cfg, motion.size) == (0.5, "once", "keep", (SIZE, SIZE))
    assert motion.keypoints is keypoints and motion.prepend_reference and motion.point_rules == "default"
    # features in reduced precision are sampled in float32 (bf16 sampling would be off by ~1e-3)
    coarse = features.to(torch.bfloat16)
    sampled_bf16 = pipe._prepare_motion(
        point_features=coarse, batch_size=1, num_videos_per_prompt=1, **common
    ).embeddings
    expected_bf16 = PointAdapter.sample_reference(coarse.float()[None], positions)
    torch.testing.assert_close(sampled_bf16, expected_bf16, atol=1e-6, rtol=0)
    # one map per image: video b's rows are its own map's samples, each repeated per prompt video
    two = torch.stack([features, features.flip(0)])
    rows = pipe._prepare_motion(
        point_features=two, batch_size=2, num_videos_per_prompt=2, **common
    ).embeddings
    by_image = PointAdapter.sample_reference(two, positions)
    torch.testing.assert_close(rows, by_image.repeat_interleave(2, 0))
    dispose = pipe._prepare_motion(
        point_features=features, batch_size=1, num_videos_per_prompt=1, point_rules="dispose", **common
    )
    assert dispose.reference_visible.tolist() == [True, False, False]  # > 0.3
    cells = PointAdapter.read_reference_cells(features[None], positions, (SIZE, SIZE))
    torch.testing.assert_close(dispose.embeddings, cells * torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1))
    # nothing to do: no ControlNet input, or scale 0
    none = {**common, "keypoints": None, "reference_keypoints": None}
    assert pipe._prepare_motion(point_features=None, batch_size=1, num_videos_per_prompt=1, **none) is None
    assert (
        pipe._prepare_motion(
            point_features=features, batch_size=1, num_videos_per_prompt=1, **(common | {"scale": 0})
        )
        is None
    )
    flows = pipe._prepare_motion(
        point_features=None,
        batch_size=1,
        num_videos_per_prompt=1,
        **(common | {"trajectory_flow": np.zeros((2, 4, 4, 2)), "residual_mode": "dispose"}),
    )
    # keypoints without point features are not kept (nothing reads them)
    assert flows.embeddings is None and flows.keypoints is None and flows.mode == "dispose"
    assert flows.prepare_flow(np.ones((1, 4, 4, 2))).shape == (1, 2, SIZE, SIZE)


def test_guidance_cfg_both_without_pose_gives_the_maps_to_both_halves(pipe):
    depth = rand(2, 3, SIZE, SIZE, seed=44)
    out = run(pipe, guidance_maps={"depth": depth}, guidance_cfg="both", prepend_reference=False)
    maps = map_features(pipe, {"depth": depth})
    close(out, reference_latents(pipe, 2, [[0, 1]], [], prepend_reference=False, shared_features=maps))


@pytest.mark.parametrize("as_pil", [False, True])
def test_the_feature_extractor_only_normalises_whatever_its_own_config(as_pil):
    """SVD's CLIP pixels are already at the encoder's size (a PIL reference is resized by the pipeline with
    antialiasing): the processor only normalises, even one configured for 8 px and no normalising."""
    pixels = (rand(SIZE, SIZE, 3, seed=12) * 255).to(torch.uint8)
    tensor = pixels.permute(2, 0, 1)[None].float() / 255
    image = PIL.Image.fromarray(pixels.numpy()) if as_pil else tensor
    odd = CLIPImageProcessor(crop_size=8, size=8, do_normalize=False)
    out = run(make_pipe(feature_extractor=odd), image=image, num_frames=2, prepend_reference=False)
    expected = reference_latents(make_pipe(), 2, [[0, 1]], [], image=tensor, prepend_reference=False)
    close(out, expected, atol=1e-4 if as_pil else ATOL)


def test_modules_in_another_dtype_than_the_unet_give_the_float32_result():
    """The pose guider, the guidance encoders and the ControlNet in float64 (as fp32 side modules of an fp16
    UNet): each is fed its own dtype and its output cast to the UNet's, so the latents are the float32
    reference's up to float32 rounding."""
    plain = make_pipe()
    wide = {
        name: copy.deepcopy(getattr(plain, name)).to(torch.float64)
        for name in ("pose_guider", "guidance_encoders", "motion_controlnet")
    }
    pipe = make_pipe(**wide)
    poses, ref_pose, depth, ref_depth = (
        rand(n, 3, SIZE, SIZE, seed=s) for n, s in ((2, 50), (1, 51), (2, 52), (1, 53))
    )
    flows = rand(2, 2, SIZE, SIZE, seed=54) * 4 - 2
    features = rand(1, 4, 4, 4, seed=55)
    reference = torch.tensor([[4.0, 8.0, 0.9], [12.0, 2.0, 0.8]])
    keypoints = torch.tensor([[[5.0, 9.0, 0.9], [11.0, 3.0, 0.8]], [[3.0, 10.0, 0.9], [13.0, 1.0, 0.5]]])
    out = run(
        pipe, pose_images=poses, reference_pose_image=ref_pose, guidance_maps={"depth": depth},
        reference_guidance_maps={"depth": ref_depth}, dense_flow=flows, point_features=features,
        keypoints=keypoints, reference_keypoints=reference, keep_reference=True,
    )  # fmt: skip
    cond = pose_features(plain, torch.cat([ref_pose, poses])) + map_features(
        plain, {"depth": torch.cat([ref_depth, depth])}
    )
    size = torch.tensor([SIZE, SIZE], dtype=torch.float32)
    points = {
        "embeddings": PointAdapter.sample_reference(features, reference[:, :2] / size),
        "positions": torch.cat([reference[None, :, :2], keypoints[..., :2]]) / size,
        "visible": torch.ones(3, 2, dtype=torch.bool),
    }
    flows = torch.cat([torch.zeros_like(flows[:1]), flows])
    expected = reference_latents(plain, 2, [[0, 1, 2]], [], cond_features=cond, flows=flows, points=points)
    close(out, expected)
    # the features are handed over in the UNet's dtype (an fp16 UNet's take half the guider's memory)
    pose, maps = pipe._guidance_features(
        poses, {"depth": depth}, ref_pose, {"depth": ref_depth}, {}, 2, True, SIZE, SIZE, torch.device("cpu"),
        guidance_cfg="both",
    ).tile([0, 1, 2])  # fmt: skip
    assert pose.dtype == maps.dtype == torch.float32
    close(pose + maps, cond, atol=1e-6)


def test_tiles_without_overlap_share_only_the_reference_frame(pipe):
    """``tile_overlap=0`` is allowed: 4 frames + the reference in tiles of 3 are [0, 1, 2], [0, 3, 4]; only
    the reference frame is blended (weight 1/3 in each)."""
    poses = rand(4, 3, SIZE, SIZE, seed=56)
    out = run(pipe, pose_images=poses, tile_size=3, tile_overlap=0, keep_reference=True)
    features = pose_features(pipe, poses)
    features = torch.cat([torch.zeros_like(features[:1]), features])  # no reference pose: zeros
    tiles = [[0, 1, 2], [0, 3, 4]]
    close(out, reference_latents(pipe, 4, tiles, [1 / 3, 1.0, 1 / 3], cond_features=features))


def test_check_inputs_leaves_an_unused_pose_guider_alone_by_default():
    """``check_inputs`` is public (diffusers' pipelines call it first): without ``uses_pose`` a pose guider
    that does not fit the VAE is not in the way."""
    deep = PoseGuider(block_out_channels=(4, 4, 4), out_channels=64)
    image = rand(1, 3, SIZE, SIZE, seed=0)
    make_pipe(pose_guider=deep).check_inputs(image, SIZE, SIZE, 3, 0, "batched", "latent", {}, None, [])
    with pytest.raises(ValueError, match=r"^pose_guider downsamples by 4, the VAE by 2$"):
        make_pipe(pose_guider=deep).check_inputs(
            image, SIZE, SIZE, 3, 0, "batched", "latent", {}, None, [], uses_pose=True
        )


def test_tensors_go_to_the_device_asked_for(pipe):
    """The meta device (shapes, no data) stands in for a GPU: the latents are drawn on or moved to the
    device asked for, condition frames, point embeddings and the CLIP pixels go there, and a tile's flows
    follow the UNet call's sample to the ControlNet."""
    meta = torch.device("meta")
    pipe.scheduler.set_timesteps(sigmas=SIGMAS)
    shape = (1, 3, 4, LATENT, LATENT)
    for kwargs in ({}, {"noise_period": 2}, {"latents": torch.zeros(shape)}):
        latents = pipe.prepare_latents(1, 3, 8, SIZE, SIZE, torch.float32, meta, None, **kwargs)
        assert latents.device == meta and latents.shape == shape, kwargs
    frames = pipe._prepare_condition_frames(rand(2, 3, SIZE, SIZE, seed=1), SIZE, SIZE, meta, torch.float32)
    assert frames.device == meta and frames.shape == (2, 3, SIZE, SIZE)
    common = dict(dense_flow=None, trajectory_flow=None, keypoints=np.zeros((2, 3, 3)),
                  reference_keypoints=np.array([[4.0, 8.0, 0.9], [12.0, 2.0, 0.3], [6.0, 6.0, 0.1]]),
                  keypoint_threshold=0.3, scale=0.5, residual_mode=None, controlnet_cfg="keep",
                  prepend_reference=True, height=SIZE, width=SIZE, device=meta)  # fmt: skip
    for rules in ("default", "dispose"):
        motion = pipe._prepare_motion(
            point_features=rand(4, 4, 4, seed=43), batch_size=1, num_videos_per_prompt=1, point_rules=rules,
            **common,
        )  # fmt: skip
        assert motion.embeddings.device == meta and motion.embeddings.shape == (1, 3, 4), rules
    encoder = make_pipe(image_encoder=copy.deepcopy(pipe.image_encoder).to(meta))
    tokens = encoder._encode_image(rand(1, 3, SIZE, SIZE, seed=0), meta, 2, True)
    assert tokens.device == meta and tokens.shape == (4, 1, 8)
    controlnet = make_pipe(motion_controlnet=copy.deepcopy(pipe.motion_controlnet).to(meta))
    flows = rand(3, 2, SIZE, SIZE, seed=1)  # on the host, as a tile's flows are read
    tile = pa._MotionInputs(flows, flows, None, None, None, 1.0, "once", "keep")
    *down, mid = controlnet._motion_residuals(
        torch.zeros(2, 3, 8, LATENT, LATENT, device=meta), torch.tensor(0.1, device=meta),
        torch.zeros(2, 1, 8, device=meta), torch.zeros(2, 3, device=meta), tile,
    )  # fmt: skip
    assert mid.device == meta and mid.shape == (6, 64, LATENT // 2, LATENT // 2)
    assert [d.device for d in down[0]] == [meta] * 4
