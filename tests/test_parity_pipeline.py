"""The published systems' sampling rules in ``AnimationPipeline`` (``UPSTREAM_PARITY.md``), each pinned on a tiny
case whose expected values come from the rule as upstream wrote it, not from our output.

MimicMotion 1-4 / DisPose D3 D5 D6: reference decoded in chunk 0, tile-periodic noise, tiles per checkpoint, uint8
by truncation. DisPose D1: diffusers 0.27's time context; D2 / D7: its point rules. Champ 1 and 4: maps in
``[0, 1]``, features in both CFG halves.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention import TemporalBasicTransformerBlock

from controlnets import PointAdapter
from pipelines import AnimationPipeline, parity, tile_indices
from pipelines.temporal_context import TemporalContext, diffusers_027_time_context
from pipelines.testing import TINY_POINT_CHANNELS, reinit_zero_layers, tiny_components

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_pipe(**kwargs) -> AnimationPipeline:
    components = tiny_components(**kwargs)
    for name in ("pose_guider", "guidance_encoders", "motion_controlnet"):
        if components.get(name) is not None:
            reinit_zero_layers(components[name])
    pipe = AnimationPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe: AnimationPipeline, **kwargs):
    inputs = {
        "image": torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)),
        "height": SIZE,
        "width": SIZE,
        "num_inference_steps": 2,
        "generator": torch.Generator().manual_seed(0),
        "output_type": "pt",
        "min_guidance_scale": 1.0,
        "max_guidance_scale": 2.5,
        "noise_aug_strength": 0.02,
    }
    inputs.update(kwargs)
    return pipe(**inputs).frames


# --- MimicMotion 1 / DisPose D5: the reference frame is decoded inside the first VAE chunk -------------------


def test_reference_frame_is_decoded_in_the_first_chunk_and_dropped_after():
    pipe = make_pipe(with_guidance_encoders=False)
    final = {}

    def keep_latents(pipe, step, t, tensors):
        final["latents"] = tensors["latents"]
        return tensors

    frames = run(
        pipe, num_frames=4, decode_chunk_size=2, decode_reference=True, callback_on_step_end=keep_latents
    )
    latents = final["latents"]  # (1, 5, 4, h, w): the reference frame 0 and 4 frames
    assert latents.shape[1] == 5
    # upstream: all 5 latents / scaling_factor, vae.decode over chunks [0, 1], [2, 3], [4], frame 0 dropped
    z = latents[0] / pipe.vae.config.scaling_factor
    with torch.no_grad():
        decoded = torch.cat(
            [pipe.vae.decode(z[i : i + 2], num_frames=len(z[i : i + 2])).sample for i in (0, 2, 4)]
        )
    expected = (decoded[1:] / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(frames[0], expected, atol=1e-5, rtol=0)
    # ours (chunks [1, 2], [3, 4]) is another video: the temporal decoder mixes the frames of a chunk
    ours = run(pipe, num_frames=4, decode_chunk_size=2)
    assert (ours[0] - expected).abs().max() > 1e-3


# --- MimicMotion 2 / DisPose D3: one tile of noise, repeated along the sequence -----------------------------


def test_periodic_noise_repeats_the_first_tile_drawn_after_the_reference_noise():
    pipe = make_pipe(with_guidance_encoders=False)
    tile, overlap, frames = 4, 1, 9  # 10 frames with the reference: 3 tiles
    tiles = tile_indices(frames + 1, tile, overlap, anchor_first=True)
    assert len(tiles) == 3
    seen = []

    def record(module, args, kwargs):
        seen.append(args[0][:, :, :4].clone())  # the scaled noisy latents of the tile (first step: noise)

    handle = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        run(pipe, num_frames=frames, tile_size=tile, tile_overlap=overlap, periodic_noise=True,
            max_guidance_scale=1.0, num_inference_steps=1)  # fmt: skip
    finally:
        handle.remove()
    first_step = torch.zeros(1, frames + 1, 4, SIZE // 2, SIZE // 2)
    for idx, sample in zip(tiles, seen[: len(tiles)], strict=True):
        first_step[:, idx] = sample
    # SVD's draw order: the reference's noise augmentation (image shape), then one tile (tile frames, the
    # reference frame counted), scaled by init_noise_sigma; the step scales it by 1 / sqrt(sigma_0^2 + 1)
    generator = torch.Generator().manual_seed(0)
    torch.randn(1, 3, SIZE, SIZE, generator=generator)
    period = torch.randn(1, tile, 4, SIZE // 2, SIZE // 2, generator=generator)
    sigma = pipe.scheduler.sigmas[0]
    scale = pipe.scheduler.init_noise_sigma / (sigma**2 + 1) ** 0.5
    for k in range(frames + 1):
        torch.testing.assert_close(first_step[:, k], first_step[:, k % tile], atol=0, rtol=0)
        torch.testing.assert_close(first_step[:, k], period[:, k % tile] * scale, atol=1e-5, rtol=1e-5)


def test_prepare_latents_period_shorter_sequence_and_given_latents():
    pipe = make_pipe(with_guidance_encoders=False)
    shape = (1, 3, 4, 2, 2)
    period = pipe.prepare_latents(
        1, 3, 8, 4, 4, torch.float32, "cpu", torch.Generator().manual_seed(1), None, 5
    )
    # fewer frames than a tile: the first frames of one tile's draw (upstream draws the tile, then slices)
    expected = torch.randn(1, 5, 4, 2, 2, generator=torch.Generator().manual_seed(1))[:, :3]
    torch.testing.assert_close(period, expected * pipe.scheduler.init_noise_sigma)
    given = torch.ones(shape)
    out = pipe.prepare_latents(1, 3, 8, 4, 4, torch.float32, "cpu", None, given, 2)
    torch.testing.assert_close(out, given * pipe.scheduler.init_noise_sigma)


# --- MimicMotion 3: tiles per checkpoint ------------------------------------------------------------------


def test_tiles_and_rules_per_loaded_checkpoint_and_preset():
    class Parts:  # only which parts are loaded matters
        def __init__(self, pose_guider=None, motion_controlnet=None, guidance_encoders=None):
            self.pose_guider, self.motion_controlnet = pose_guider, motion_controlnet
            self.guidance_encoders = guidance_encoders

    svd, mimicmotion = Parts(), Parts(pose_guider=1)
    dispose, champ = Parts(pose_guider=1, motion_controlnet=1), Parts(pose_guider=1, guidance_encoders=1)
    # MimicMotion 1.1 configs/test.yaml: num_frames 72, frames_overlap 6; DisPose configs/test.yaml: 16, 6
    assert parity.default_tiles(mimicmotion) == (72, 6)
    assert parity.default_tiles(dispose) == (16, 6)
    assert parity.default_tiles(dispose, "mimicmotion") == (72, 6)
    assert parity.default_tiles(svd) == (16, 6)
    assert parity.call_kwargs(svd) == {}
    assert parity.call_kwargs(mimicmotion) == {"decode_reference": True, "periodic_noise": True}
    assert not parity.truncates_uint8(svd) and parity.truncates_uint8(mimicmotion)
    assert parity.call_kwargs(champ) == {
        "decode_reference": True,
        "periodic_noise": True,
        "guidance_range": "unit",
        "guidance_cfg": "both",
    }
    assert "guidance_range" not in parity.call_kwargs(champ, "mimicmotion")  # a preset: no Champ encoders
    assert parity.call_kwargs(dispose)["decode_reference"] and "temporal_context" not in parity.call_kwargs(
        dispose
    )
    assert parity.call_kwargs(dispose, "dispose") == {
        "decode_reference": True,
        "periodic_noise": True,
        "temporal_context": "diffusers_0.27",
        "point_rules": "dispose",
    }
    with pytest.raises(ValueError, match="motion_controlnet"):
        parity.call_kwargs(mimicmotion, "dispose")
    with pytest.raises(ValueError, match="preset must be one of"):
        parity.call_kwargs(mimicmotion, "champ")


# --- MimicMotion 4 / DisPose D6: uint8 by truncation --------------------------------------------------------


def test_uint8_truncates_like_upstream_and_rounds_otherwise():
    from animate.engines.diffusion import frames_to_uint8

    values = np.array([0.0, 0.999 / 255, 0.5, 254.9 / 255, 1.0], np.float32)
    np.testing.assert_array_equal(frames_to_uint8(values, truncate=True), [0, 0, 127, 254, 255])
    np.testing.assert_array_equal(frames_to_uint8(values), [0, 1, 128, 255, 255])
    # upstream's own line, inference.py:76: (frames * 255.0).to(torch.uint8), on float32 frames in [0, 1]
    frames = torch.rand(4, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(
        frames_to_uint8(frames.numpy(), True), (frames * 255.0).to(torch.uint8).numpy()
    )


# --- DisPose D1: diffusers 0.27's time context under batched CFG --------------------------------------------


def test_diffusers_027_rows_take_the_token_of_video_row_mod_videos():
    tokens = torch.arange(2.0).view(2, 1, 1)  # video b's token is b
    # 0.27: time_context_first_timestep[None].broadcast_to(pixels, videos, 1, D).reshape(pixels * videos, 1, D)
    rule = tokens[None].broadcast_to(3, 2, 1, 1).reshape(6, 1, 1)
    torch.testing.assert_close(diffusers_027_time_context(tokens, 3), rule)
    assert diffusers_027_time_context(tokens, 3).flatten().tolist() == [0, 1, 0, 1, 0, 1]
    # the second video alone (sequential CFG) gets the rows 3..5 of the batched call
    assert diffusers_027_time_context(tokens, 3, first_video=1, videos=1).flatten().tolist() == [1, 0, 1]


def _temporal_contexts(unet, mode, videos, frames, tokens):
    """The ``encoder_hidden_states`` each temporal block's cross-attention receives in one UNet call."""
    seen = []
    blocks = [m for m in unet.modules() if isinstance(m, TemporalBasicTransformerBlock)]
    handles = [
        b.attn2.register_forward_pre_hook(
            lambda m, a, k: seen.append(k["encoder_hidden_states"]), with_kwargs=True
        )
        for b in blocks
    ]
    sample = torch.randn(videos, frames, 8, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(0))
    try:
        with TemporalContext([unet], mode), torch.no_grad():
            unet(sample, 10.0, encoder_hidden_states=tokens, added_time_ids=torch.zeros(videos, 3))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_temporal_blocks_pair_pixels_with_video_p_mod_2_under_diffusers_027():
    unet = tiny_components(with_guidance_encoders=False)["unet"]
    tokens = torch.randn(2, 1, 32, generator=torch.Generator().manual_seed(1))  # two videos (a CFG batch)
    for mode in ("per_video", "diffusers_0.27"):
        contexts = _temporal_contexts(unet, mode, 2, 3, tokens)
        assert contexts
        for context in contexts:
            pixels = context.shape[0] // 2
            rows = context.view(2, pixels, 1, 32)  # temporal rows are video-major: row = video * pixels + p
            for video in range(2):
                for p in range(pixels):
                    owner = video if mode == "per_video" else p % 2  # pixels is even at every level here
                    torch.testing.assert_close(rows[video, p], tokens[owner], atol=0, rtol=0)


def test_diffusers_027_context_is_the_same_batched_or_sequential_and_changes_the_video():
    pipe = make_pipe(with_guidance_encoders=False, with_motion_controlnet=True)
    flows = torch.randn(3, SIZE, SIZE, 2, generator=torch.Generator().manual_seed(2)) * 3
    common = {"num_frames": 3, "dense_flow": flows, "trajectory_flow": flows, "output_type": "latent"}
    batched = run(pipe, temporal_context="diffusers_0.27", cfg_mode="batched", **common)
    sequential = run(pipe, temporal_context="diffusers_0.27", cfg_mode="sequential", **common)
    # same maths in another summation order (two Euler steps from sigma 700 amplify float noise)
    assert ((batched - sequential).norm() / batched.norm()).item() < 1e-4
    per_video = run(pipe, cfg_mode="batched", **common)
    assert ((per_video - batched).norm() / batched.norm()).item() > 1e-2


# --- DisPose D2 / D7: its point rules ------------------------------------------------------------------------


def test_dispose_reference_cells_upsample_to_swapped_size_and_read_an_integer_cell():
    features = torch.randn(1, 6, 3, 5, generator=torch.Generator().manual_seed(0))
    height, width = 24, 40
    positions = torch.tensor([[0.1, 0.2], [0.51, 0.77], [0.99, 0.01], [1.3, -0.2], [-0.1, 1.0]])
    # upstream: nn.Upsample(size=(W, H), mode="bilinear") on the map, then [b, :, int(y * W), int(x * H)],
    # each index clamped into [0, size - 1]
    upsampled = F.interpolate(features, size=(width, height), mode="bilinear")
    expected = []
    for x, y in positions.tolist():
        row = max(min(int(y * width), width - 1), 0)
        col = max(min(int(x * height), height - 1), 0)
        expected.append(upsampled[0, :, row, col])
    out = PointAdapter.read_reference_cells(features, positions, (height, width))
    torch.testing.assert_close(out[0], torch.stack(expected), atol=1e-6, rtol=1e-5)
    bilinear = PointAdapter.sample_reference(features, positions)
    assert (bilinear - out).abs().max() > 1e-3  # another rule than ours


def _point_inputs(pipe, **kwargs):
    """The point inputs the ControlNet receives on its first call."""
    seen = {}

    def record(module, args, call_kwargs):
        seen.setdefault("kwargs", call_kwargs)

    handle = pipe.motion_controlnet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        run(pipe, num_inference_steps=1, max_guidance_scale=1.0, output_type="latent", **kwargs)
    finally:
        handle.remove()
    return seen["kwargs"]


def test_dispose_point_rules_place_reference_unseen_points_with_zero_embeddings_and_clamp_far_points():
    pipe = make_pipe(with_guidance_encoders=False, with_motion_controlnet=True)
    features = torch.randn(1, TINY_POINT_CHANNELS, 2, 2, generator=torch.Generator().manual_seed(0))
    # four keypoints (x, y, score) in pixels of the 32x32 output; the reference sees 0, 2, 3 (> 0.3)
    reference = torch.tensor([[4.0, 4.0, 0.9], [20.0, 20.0, 0.1], [8.0, 24.0, 0.9], [24.0, 8.0, 0.3]])
    frame = torch.tensor([[[6.0, 6.0, 0.9], [10.0, 26.0, 0.9], [40.0, 4.0, 0.9], [-2.0, 30.0, 0.9]]])
    inputs = {
        "num_frames": 1,
        "point_features": features,
        "keypoints": frame,
        "reference_keypoints": reference,
    }
    ours = _point_inputs(pipe, **inputs)
    dispose = _point_inputs(pipe, point_rules="dispose", **inputs)
    # rows: the prepended reference frame, then the frame
    frame_row = 1
    # ours: a point counts where frame and reference both reach 0.3: points 0 and 2 (3 has exactly 0.3)
    assert ours["point_visible"][frame_row].tolist() == [True, False, True, True]
    # DisPose: seen is score > 0.3 in the point's own frame only: all four in the frame; in the reference 0, 2
    assert dispose["point_visible"][0].tolist() == [True, False, True, False]
    assert dispose["point_visible"][frame_row].tolist() == [True, True, True, True]
    embeddings = dispose["point_embeddings"][frame_row]
    assert embeddings[1].abs().max() == 0 and embeddings[3].abs().max() == 0  # unseen in the reference
    assert embeddings[0].abs().max() > 0
    # x = 40 / 32 > 1 lands in the last cell; x < 0 stays out (upstream skips keypoint.min() < 0)
    positions = dispose["point_positions"][frame_row]
    cells, _ = PointAdapter.scatter(
        embeddings[None], positions[None], dispose["point_visible"][frame_row][None], (2, 2)
    )
    # grid 2 x 2 (cell = 16 px): point 0 (6, 6) -> cell 0; point 1 (10, 26) -> row 1 col 0 = 2;
    # point 2 (40, 4) -> row 0, col clamped to 1 = 1; point 3 (-2, 30) -> out
    assert cells.tolist() == [0, 1, 2]
    ours_cells, _ = PointAdapter.scatter(
        ours["point_embeddings"][frame_row][None], ours["point_positions"][frame_row][None],
        ours["point_visible"][frame_row][None], (2, 2),
    )  # fmt: skip
    assert ours_cells.tolist() == [0]  # ours: 1 unseen in the reference, 2 and 3 outside the image


# --- Champ 1 and 4: maps in [0, 1], features in both CFG halves ---------------------------------------------


def _conv_in_residuals(pipe, **kwargs):
    """Per UNet call: what was added to ``conv_in``'s output (the down blocks' input minus ``conv_in``'s)."""
    raw, added = [], []
    h1 = pipe.unet.conv_in.register_forward_hook(lambda m, a, out: raw.append(out.clone()))
    h2 = pipe.unet.down_blocks[0].register_forward_pre_hook(
        lambda m, a, k: added.append(k["hidden_states"] - raw[-1]), with_kwargs=True
    )
    try:
        run(pipe, **kwargs)
    finally:
        h1.remove()
        h2.remove()
    return added


@pytest.mark.parametrize("guidance_cfg", ["both", "cond"])
def test_champ_maps_reach_the_encoders_as_uint8_over_255_and_features_reach_both_halves(guidance_cfg):
    pipe = make_pipe()
    pipe.pose_guider = None  # only the guidance encoders add features
    maps = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    seen = []
    handle = pipe.guidance_encoders.encoders["depth"].register_forward_pre_hook(
        lambda m, a: seen.append(a[0])
    )
    try:
        added = _conv_in_residuals(
            pipe, num_frames=2, guidance_maps={"depth": maps}, guidance_range="unit", guidance_cfg=guidance_cfg,
            num_inference_steps=1, max_guidance_scale=2.0, min_guidance_scale=2.0,
        )  # fmt: skip
    finally:
        handle.remove()
    unit = torch.from_numpy(maps).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(seen[0], unit, atol=0, rtol=0)  # Champ: uint8 / 255, not [-1, 1]
    with torch.no_grad():
        features = pipe.guidance_encoders.encoders["depth"](unit)
    features = torch.cat([torch.zeros_like(features[:1]), features])  # the reference frame: no maps, zeros
    (call,) = added  # one step, one tile, batched CFG: rows [negative 3 frames, positive 3 frames]
    negative, positive = call.chunk(2)
    torch.testing.assert_close(positive, features, atol=1e-5, rtol=1e-5)
    expected_negative = features if guidance_cfg == "both" else torch.zeros_like(features)
    torch.testing.assert_close(negative, expected_negative, atol=1e-5, rtol=1e-5)


def test_signed_range_stays_the_default():
    pipe = make_pipe()
    maps = np.random.default_rng(0).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    seen = []
    handle = pipe.guidance_encoders.encoders["depth"].register_forward_pre_hook(
        lambda m, a: seen.append(a[0])
    )
    try:
        run(pipe, num_frames=1, guidance_maps={"depth": maps}, num_inference_steps=1, output_type="latent")
    finally:
        handle.remove()
    signed = torch.from_numpy(maps).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    torch.testing.assert_close(seen[0], signed, atol=1e-6, rtol=0)


def test_invalid_parity_arguments_raise_value_errors():
    pipe = make_pipe(with_guidance_encoders=False)
    for name, value in (
        ("temporal_context", "diffusers_0.26"),
        ("point_rules", "mimicmotion"),
        ("guidance_range", "0-255"),
        ("guidance_cfg", "uncond"),
    ):
        with pytest.raises(ValueError, match=name):
            run(pipe, num_frames=1, **{name: value})
