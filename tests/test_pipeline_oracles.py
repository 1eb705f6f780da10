"""AnimationPipeline against independent expectations: what each UNet call must have computed.

A reference forward pass of the stock SVD UNet, written here from diffusers' and DisPose's code (no hooks),
takes the guidance features and ControlNet residuals as plain additions; the pipeline's UNet calls are
captured (inputs and outputs) and must equal it. Tile fusion and classifier-free guidance are checked the
same way: the fused ``noise_pred`` must equal a blend of the captured per-call predictions computed here
by hand (triangular weights, ``uncond + s * (cond - uncond)`` with per-frame scales).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from pipelines import AnimationPipeline
from pipelines.injection import UNetInjector
from pipelines.testing import TINY_POINT_CHANNELS, reinit_zero_layers, tiny_components, tiny_unet

SIZE = 32
LATENT = SIZE // 2  # the tiny VAE downsamples by 2
ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models: thread hand-offs cost more than they save, and far more when the cores are shared
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def reference_unet(
    unet: UNetSpatioTemporalConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    added_time_ids: torch.Tensor,
    features: torch.Tensor | None = None,
    down: list[torch.Tensor] | None = None,
    mid: torch.Tensor | None = None,
    mode: str = "once",
) -> torch.Tensor:
    """diffusers' spatio-temporal UNet forward, written out, with MimicMotion's pose features added to
    ``conv_in``'s output and ControlNet residuals: ``"once"`` adds each skip's residual before the up
    blocks (diffusers' ControlNets); ``"dispose"`` adds them to every skip collected so far after each
    down block (DisPose's UNet loop). Rows of ``features`` / residuals: every ``batch * frames`` row."""
    batch, frames = sample.shape[:2]
    emb = unet.time_embedding(unet.time_proj(timestep.reshape(-1).expand(batch)).to(sample.dtype))
    time_embeds = unet.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
    emb = (emb + unet.add_embedding(time_embeds)).repeat_interleave(frames, dim=0)
    context = encoder_hidden_states.repeat_interleave(frames, dim=0)
    indicator = torch.zeros(batch, frames, dtype=sample.dtype)
    x = unet.conv_in(sample.flatten(0, 1))
    if features is not None:
        x = x + features
    skips = [x]
    for block in unet.down_blocks:
        kwargs = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
        x, res = block(hidden_states=x, temb=emb, image_only_indicator=indicator, **kwargs)
        skips += list(res)
        if mode == "dispose" and down is not None:
            skips = [s + r for s, r in zip(skips, down, strict=False)]
    if mode == "once" and down is not None:
        skips = [s + r for s, r in zip(skips, down, strict=True)]
    x = unet.mid_block(
        hidden_states=x, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator
    )
    if mid is not None:
        x = x + mid
    for block in unet.up_blocks:
        count = len(block.resnets)
        res, skips = tuple(skips[-count:]), skips[:-count]
        kwargs = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
        x = block(
            hidden_states=x, temb=emb, res_hidden_states_tuple=res, image_only_indicator=indicator, **kwargs
        )
    x = unet.conv_out(unet.conv_act(unet.conv_norm_out(x)))
    return x.reshape(batch, frames, *x.shape[1:])


class UNetCalls:
    """Every UNet call of a pipeline run: ``sample``, ``t``, ``encoder_hidden_states``, ``added_time_ids``
    and the prediction it returned (hooks on the UNet module itself, not on its blocks)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.calls: list[dict] = []
        unet.register_forward_pre_hook(self._before, with_kwargs=True)
        unet.register_forward_hook(self._after)

    def _before(self, module, args, kwargs):
        sample, t = args[:2]
        self.calls.append(
            {
                "sample": sample.clone(),
                "t": torch.as_tensor(t).clone(),
                "encoder_hidden_states": kwargs["encoder_hidden_states"].clone(),
                "added_time_ids": kwargs["added_time_ids"].clone(),
            }
        )

    def _after(self, module, args, output):
        self.calls[-1]["output"] = output[0].clone()

    def reference(self, unet: torch.nn.Module, call: dict, **kwargs) -> torch.Tensor:
        with torch.no_grad():
            return reference_unet(
                unet,
                call["sample"],
                call["t"],
                call["encoder_hidden_states"],
                call["added_time_ids"],
                **kwargs,
            )


def make_pipe(pose: bool = False, controlnet: bool = False, residual_mode: str = "once") -> AnimationPipeline:
    components = tiny_components(with_motion_controlnet=controlnet)
    if pose:
        reinit_zero_layers(components["pose_guider"])
        reinit_zero_layers(components["guidance_encoders"])
    if controlnet:
        components["motion_controlnet"].register_to_config(residual_mode=residual_mode)
        reinit_zero_layers(components["motion_controlnet"])
    pipe = AnimationPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe: AnimationPipeline, noise_preds: list | None = None, **kwargs) -> torch.Tensor:
    """One step by default; ``noise_preds`` collects the fused prediction of every step."""

    def keep(pipeline, step, timestep, tensors):
        noise_preds.append(tensors["noise_pred"].clone())
        return {}

    inputs = {
        "image": _rand(1, 3, SIZE, SIZE, seed=0),
        "height": SIZE,
        "width": SIZE,
        "num_inference_steps": 1,
        "generator": torch.Generator().manual_seed(0),
        "output_type": "latent",
        "min_guidance_scale": 1.0,
        "max_guidance_scale": 2.5,
        "noise_aug_strength": 0.02,
    }
    if noise_preds is not None:
        inputs |= {"callback_on_step_end": keep, "callback_on_step_end_tensor_inputs": ["noise_pred"]}
    inputs.update(kwargs)
    return pipe(**inputs).frames


def test_reference_forward_equals_the_stock_unet():
    """The written-out forward is diffusers' (so the tests below compare with a faithful reference)."""
    torch.manual_seed(0)
    unet = tiny_unet().eval()
    sample = torch.randn(2, 3, 8, LATENT, LATENT)
    context, ids = torch.randn(2, 1, 32), torch.tensor([[6.0, 127.0, 0.02]] * 2)
    t = torch.tensor(0.7)
    with torch.no_grad():
        stock = unet(sample, t, encoder_hidden_states=context, added_time_ids=ids, return_dict=False)[0]
        ours = reference_unet(unet, sample, t, context, ids)
    torch.testing.assert_close(ours, stock, atol=ATOL, rtol=0)


# --- conv_in features: the pose guider's and the guidance encoders' output, added, to the right rows ----


@pytest.mark.parametrize("cfg_mode", ["batched", "sequential"])
def test_guidance_features_are_added_to_conv_in_of_the_conditional_rows(cfg_mode):
    pipe = make_pipe(pose=True)
    calls = UNetCalls(pipe.unet)
    poses, ref_pose, depth = (
        _rand(3, 3, SIZE, SIZE, seed=1),
        _rand(1, 3, SIZE, SIZE, seed=2),
        _rand(3, 3, SIZE, SIZE, seed=3),
    )
    scales = {"pose": 0.5, "depth": 1.5}
    run(
        pipe,
        pose_images=poses,
        reference_pose_image=ref_pose,
        guidance_maps={"depth": depth},
        conditioning_scales=scales,
        cfg_mode=cfg_mode,
    )
    with torch.no_grad():
        # tensors in [0, 1] reach the modules in [-1, 1]; the prepended reference frame gets the reference's
        # pose and no maps (zeros); scales multiply the pose guider's output
        pose = 0.5 * pipe.pose_guider(torch.cat([ref_pose, poses]) * 2 - 1)
        maps = pipe.guidance_encoders({"depth": depth * 2 - 1}, scales)
        expected = pose + torch.cat([torch.zeros_like(maps[:1]), maps])
    rows = expected.shape[0]  # 4: the reference frame + 3
    if cfg_mode == "batched":
        (call,) = calls.calls
        features = torch.cat([torch.zeros_like(expected), expected])  # the unconditional half gets nothing
        torch.testing.assert_close(
            call["output"], calls.reference(pipe.unet, call, features=features), atol=ATOL, rtol=0
        )
    else:
        uncond, cond = calls.calls
        torch.testing.assert_close(uncond["output"], calls.reference(pipe.unet, uncond), atol=ATOL, rtol=0)
        torch.testing.assert_close(
            cond["output"], calls.reference(pipe.unet, cond, features=expected), atol=ATOL, rtol=0
        )
    assert all(c["sample"].shape[1] == rows for c in calls.calls)
    # the features are not negligible: without them the prediction is far away
    cond = calls.calls[-1]
    plain = calls.reference(pipe.unet, cond)
    assert (cond["output"][-1] - plain[-1]).abs().max() > 10 * ATOL


def test_reference_maps_and_every_video_of_the_batch_get_their_features():
    """Two videos per prompt, batched CFG: rows are [uncond video 0, uncond video 1, cond video 0, cond
    video 1], each video ``[reference, frames]``; the reference frame gets its own pose and maps."""
    pipe = make_pipe(pose=True)
    calls = UNetCalls(pipe.unet)
    poses, depth = _rand(2, 3, SIZE, SIZE, seed=1), _rand(2, 3, SIZE, SIZE, seed=3)
    ref_pose, ref_depth = _rand(1, 3, SIZE, SIZE, seed=2), _rand(1, 3, SIZE, SIZE, seed=4)
    run(
        pipe,
        pose_images=poses,
        reference_pose_image=ref_pose,
        guidance_maps={"depth": depth},
        reference_guidance_maps={"depth": ref_depth},
        num_videos_per_prompt=2,
    )
    with torch.no_grad():
        pose = pipe.pose_guider(torch.cat([ref_pose, poses]) * 2 - 1)
        maps = pipe.guidance_encoders({"depth": torch.cat([ref_depth, depth]) * 2 - 1}, {})
        video = pose + maps  # (3, C, h, w): the reference frame + 2
    (call,) = calls.calls
    assert call["sample"].shape[:2] == (4, 3)
    features = torch.cat([torch.zeros_like(video), torch.zeros_like(video), video, video])
    torch.testing.assert_close(
        call["output"], calls.reference(pipe.unet, call, features=features), atol=ATOL, rtol=0
    )


# --- classifier-free guidance: uncond + s * (cond - uncond), s per frame ----------------------------


@pytest.mark.parametrize("cfg_mode", ["batched", "sequential"])
def test_cfg_combines_the_halves_with_per_frame_scales(cfg_mode):
    pipe = make_pipe()
    calls, noise_preds = UNetCalls(pipe.unet), []
    run(pipe, noise_preds, num_frames=4, prepend_reference=False, cfg_mode=cfg_mode)
    if cfg_mode == "batched":
        (call,) = calls.calls
        uncond, cond = call["output"].chunk(2)
        uncond_sample, uncond_context = call["sample"][:1], call["encoder_hidden_states"][:1]
    else:
        first, second = calls.calls
        uncond, cond = first["output"], second["output"]
        uncond_sample, uncond_context = first["sample"], first["encoder_hidden_states"]
    # SVD's unconditional half: zero CLIP embedding and zero reference latents
    assert not uncond_context.any() and not uncond_sample[:, :, 4:].any()
    scale = torch.tensor([1.0, 1.5, 2.0, 2.5]).view(1, 4, 1, 1, 1)  # linspace(min 1.0, max 2.5) over 4 frames
    torch.testing.assert_close(noise_preds[0], uncond + scale * (cond - uncond), atol=ATOL, rtol=0)


def test_no_cfg_when_the_max_scale_is_one():
    pipe = make_pipe()
    calls, noise_preds = UNetCalls(pipe.unet), []
    run(pipe, noise_preds, num_frames=3, prepend_reference=False, max_guidance_scale=1.0)
    (call,) = calls.calls
    assert call["sample"].shape[0] == 1 and call["encoder_hidden_states"].any()
    torch.testing.assert_close(noise_preds[0], call["output"], atol=0, rtol=0)


# --- tile fusion: triangular weights, normalised, per frame ---------------------------------------


@pytest.mark.parametrize(
    ("prepend_reference", "num_frames", "tiles"),
    [
        (False, 6, [[0, 1, 2, 3], [2, 3, 4, 5]]),  # tile 4, overlap 2
        (True, 5, [[0, 1, 2, 3], [0, 3, 4, 5]]),  # the reference frame 0 in both tiles
    ],
)
def test_two_tiles_are_blended_with_triangular_weights(prepend_reference, num_frames, tiles):
    pipe = make_pipe()
    calls, noise_preds = UNetCalls(pipe.unet), []
    length = num_frames + int(prepend_reference)
    latents = torch.randn(1, length, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(3))
    run(
        pipe,
        noise_preds,
        num_frames=num_frames,
        prepend_reference=prepend_reference,
        tile_size=4,
        tile_overlap=2,
        max_guidance_scale=1.0,  # one UNet call per tile, its output is the tile's prediction
        latents=latents,
    )
    assert len(calls.calls) == len(tiles)
    # each tile sees its frames of the scaled initial latents: x * init_sigma / sqrt(sigma_0^2 + 1)
    sigma = pipe.scheduler.sigmas[0]
    latent_input = latents * pipe.scheduler.init_noise_sigma / (sigma**2 + 1) ** 0.5
    for call, idx in zip(calls.calls, tiles, strict=True):
        torch.testing.assert_close(call["sample"][:, :, :4], latent_input[:, idx], atol=ATOL, rtol=1e-6)
    # MimicMotion's window over 4 frames: min(w, 2 - w), w = (i + 0.5) / 2 -> 1/4, 3/4, 3/4, 1/4
    window = [0.25, 0.75, 0.75, 0.25]
    expected = torch.zeros(1, length, 4, LATENT, LATENT)
    for frame in range(length):
        terms = [
            (window[idx.index(frame)], call["output"][:, idx.index(frame)])
            for call, idx in zip(calls.calls, tiles, strict=True)
            if frame in idx
        ]
        expected[:, frame] = sum(w * p for w, p in terms) / sum(w for w, _ in terms)
    torch.testing.assert_close(noise_preds[0], expected, atol=ATOL, rtol=0)
    # the overlap is not a plain average: frame 3 of the reference case weighs 1/4 against 3/4
    (a, b) = (c["output"][:, tiles[k].index(3)] for k, c in enumerate(calls.calls))
    assert (noise_preds[0][:, 3] - (a + b) / 2).abs().max() > 10 * ATOL


# --- ControlNet residuals: "once", DisPose's 4/3/2/1, the config's mode when the call gives none ------


def _svd_layout_unet() -> UNetSpatioTemporalConditionModel:
    """SVD's four down blocks (three with cross-attention) and their up blocks, at toy width."""
    torch.manual_seed(0)
    return UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=2,
        sample_size=16,
        in_channels=8,
        out_channels=4,
        cross_attention_dim=32,
        num_attention_heads=(2, 2, 2, 2),
        projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
    ).eval()


def test_dispose_residuals_match_dispose_loop_on_svd_layout():
    """SVD's 12 skips take their residual 4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1 times in DisPose's UNet."""
    unet = _svd_layout_unet()
    batch, frames = 1, 2
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, frames, 8, 16, 16, generator=generator)
    context, ids, t = (
        torch.randn(batch, 1, 32, generator=generator),
        torch.tensor([[6.0, 127.0, 0.0]]),
        torch.tensor(1.5),
    )

    # the skip shapes, from a plain forward
    shapes = []
    for block in unet.up_blocks:
        block.register_forward_pre_hook(
            lambda m, a, k: shapes.extend(s.shape for s in reversed(k["res_hidden_states_tuple"])),
            with_kwargs=True,
        )
    with torch.no_grad():
        plain = unet(sample, t, encoder_hidden_states=context, added_time_ids=ids, return_dict=False)[0]
    for block in unet.up_blocks:
        block._forward_pre_hooks.clear()
    shapes = shapes[::-1]  # the UNet's skip order
    assert len(shapes) == 12
    down = [torch.randn(shape, generator=generator) * 0.1 for shape in shapes]
    mid = torch.randn(batch * frames, 32, 2, 2, generator=generator) * 0.1
    with torch.no_grad():
        ours = {}
        for mode in ("dispose", "once"):
            with UNetInjector(unet) as injector, injector.controlnet_residuals(down, mid, mode=mode):
                ours[mode] = unet(
                    sample, t, encoder_hidden_states=context, added_time_ids=ids, return_dict=False
                )[0]
            expected = reference_unet(unet, sample, t, context, ids, down=down, mid=mid, mode=mode)
            torch.testing.assert_close(ours[mode], expected, atol=ATOL, rtol=0, msg=mode)
        # the same counts by hand: each skip's residual times 4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1, added once
        times = [4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1]
        scaled = [r * n for r, n in zip(down, times, strict=True)]
        by_count = reference_unet(unet, sample, t, context, ids, down=scaled, mid=mid, mode="once")
    torch.testing.assert_close(ours["dispose"], by_count, atol=1e-4, rtol=0)
    assert (ours["dispose"] - ours["once"]).abs().max() > 10 * ATOL
    assert (ours["once"] - plain).abs().max() > 10 * ATOL


class ControlNetCalls:
    """The motion ControlNet's residuals of every call."""

    def __init__(self, controlnet: torch.nn.Module) -> None:
        self.outputs: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        controlnet.register_forward_hook(
            lambda m, a, out: self.outputs.append(([d.clone() for d in out[0]], out[1].clone()))
        )


@pytest.mark.parametrize(
    ("config_mode", "call_mode", "expected_mode"),
    [
        ("dispose", None, "dispose"),  # the ControlNet's config decides when the call passes none
        ("once", None, "once"),
        ("dispose", "once", "once"),  # the call's argument wins
        ("once", "dispose", "dispose"),
    ],
)
def test_controlnet_residuals_follow_the_residual_mode(config_mode, call_mode, expected_mode):
    pipe = make_pipe(controlnet=True, residual_mode=config_mode)
    calls, residuals = UNetCalls(pipe.unet), ControlNetCalls(pipe.motion_controlnet)
    flow = torch.randn(2, SIZE, SIZE, 2, generator=torch.Generator().manual_seed(1)) * 3
    run(pipe, dense_flow=flow, residual_mode=call_mode, max_guidance_scale=1.0)
    (call,), ((down, mid),) = calls.calls, residuals.outputs
    expected = calls.reference(pipe.unet, call, down=down, mid=mid, mode=expected_mode)
    torch.testing.assert_close(call["output"], expected, atol=ATOL, rtol=0)
    other = calls.reference(
        pipe.unet, call, down=down, mid=mid, mode=({"once", "dispose"} - {expected_mode}).pop()
    )
    assert (call["output"] - other).abs().max() > 10 * ATOL  # the two modes are told apart here


@pytest.mark.parametrize("controlnet_cfg", ["keep", "drop"])
def test_controlnet_rows_under_batched_cfg(controlnet_cfg):
    """ "keep": the negative half gets its own residuals (the ControlNet runs on all rows); "drop": none."""
    pipe = make_pipe(controlnet=True, residual_mode="dispose")
    calls, residuals = UNetCalls(pipe.unet), ControlNetCalls(pipe.motion_controlnet)
    flow = torch.randn(2, SIZE, SIZE, 2, generator=torch.Generator().manual_seed(1)) * 3
    run(pipe, dense_flow=flow, controlnet_cfg=controlnet_cfg)
    (call,), ((down, mid),) = calls.calls, residuals.outputs
    rows = call["sample"].shape[0] * call["sample"].shape[1]
    if controlnet_cfg == "drop":
        assert mid.shape[0] == rows // 2
        down = [torch.cat([torch.zeros_like(d), d]) for d in down]
        mid = torch.cat([torch.zeros_like(mid), mid])
    assert mid.shape[0] == rows
    expected = calls.reference(pipe.unet, call, down=down, mid=mid, mode="dispose")
    torch.testing.assert_close(call["output"], expected, atol=ATOL, rtol=0)


def test_points_reach_the_controlnet_normalised_by_width_and_height():
    """A 48 x 32 (W x H) video: positions are (x / 48, y / 32), the reference frame's first; a point shows
    where its and the reference's scores reach the threshold; each carries the reference feature of the
    cell under the reference keypoint (cell centres sample exactly)."""
    pipe = make_pipe(controlnet=True)
    seen: list[dict] = []
    pipe.motion_controlnet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True
    )
    features = torch.randn(1, TINY_POINT_CHANNELS, 2, 3, generator=torch.Generator().manual_seed(4))
    cells = [(0, 0), (1, 2), (0, 1)]  # (row, column) of each reference keypoint's 16-px cell
    reference_keypoints = torch.tensor([[(c + 0.5) * 16, (r + 0.5) * 16, 0.9] for r, c in cells])
    reference_keypoints[2, 2] = 0.1  # the reference does not show keypoint 2
    keypoints = torch.tensor(
        [
            [[4.0, 8.0, 0.9], [40.0, 24.0, 0.9], [20.0, 2.0, 0.9]],
            [[44.0, 30.0, 0.2], [12.0, 6.0, 0.5], [30.0, 10.0, 0.9]],
        ]
    )
    run(
        pipe,
        height=32,
        width=48,
        point_features=features,
        keypoints=keypoints,
        reference_keypoints=reference_keypoints,
        max_guidance_scale=1.0,
    )
    (call,) = seen
    size = torch.tensor([48.0, 32.0])
    positions = torch.cat([reference_keypoints[None, :, :2], keypoints[..., :2]]) / size
    torch.testing.assert_close(call["point_positions"], positions)
    expected_visible = torch.tensor([[True, True, False], [True, True, False], [False, True, False]])
    assert torch.equal(call["point_visible"], expected_visible)
    embeddings = torch.stack([features[0, :, r, c] for r, c in cells])  # (K, E)
    torch.testing.assert_close(call["point_embeddings"], embeddings.expand(3, -1, -1), atol=1e-5, rtol=0)


def test_the_prepended_reference_frame_is_dropped_from_the_output():
    pipe = make_pipe()
    last: list[torch.Tensor] = []

    def keep(pipeline, step, timestep, tensors):
        last[:] = [tensors["latents"].clone()]
        return {}

    out = run(pipe, num_frames=3, max_guidance_scale=1.0, callback_on_step_end=keep)
    assert last[0].shape[1] == 4  # the reference + 3 frames are denoised
    assert torch.equal(out, last[0][:, 1:])
    frames = run(pipe, num_frames=3, max_guidance_scale=1.0, callback_on_step_end=keep, output_type="pt")
    with torch.no_grad():  # SVD's decode: latents / scaling factor, VAE, [-1, 1] -> [0, 1]
        latents = last[0][0, 1:] / pipe.vae.config.scaling_factor
        decoded = pipe.vae.decode(latents, num_frames=3).sample
    torch.testing.assert_close(frames[0], (decoded / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("with_pose", [True, False])
def test_guidance_cfg_both_gives_the_maps_to_both_halves(with_pose):
    """Champ's way: guidance-encoder features in the unconditional half too; the pose only in the other."""
    pipe = make_pipe(pose=True)
    calls = UNetCalls(pipe.unet)
    poses, depth = _rand(2, 3, SIZE, SIZE, seed=1), _rand(2, 3, SIZE, SIZE, seed=3)
    run(
        pipe,
        pose_images=poses if with_pose else None,
        guidance_maps={"depth": depth},
        guidance_cfg="both",
        prepend_reference=False,
    )
    with torch.no_grad():
        pose = pipe.pose_guider(poses * 2 - 1) if with_pose else 0
        maps = pipe.guidance_encoders({"depth": depth * 2 - 1}, {})
    (call,) = calls.calls
    features = torch.cat([maps, pose + maps])
    torch.testing.assert_close(
        call["output"], calls.reference(pipe.unet, call, features=features), atol=ATOL, rtol=0
    )


def test_each_tile_is_guided_with_its_own_frames_scales():
    """Two tiles under sequential CFG: tile k's prediction is uncond + s[frame] * (cond - uncond) with the
    scales of its own frames (linspace(1.0, 2.5) over 6 frames), then the tiles are blended."""
    pipe = make_pipe()
    calls, noise_preds = UNetCalls(pipe.unet), []
    run(
        pipe,
        noise_preds,
        num_frames=6,
        prepend_reference=False,
        tile_size=4,
        tile_overlap=2,
        cfg_mode="sequential",
    )
    tiles, window = [[0, 1, 2, 3], [2, 3, 4, 5]], torch.tensor([0.25, 0.75, 0.75, 0.25])
    scales = torch.tensor([1.0, 1.3, 1.6, 1.9, 2.2, 2.5])
    assert len(calls.calls) == 4  # per tile: the unconditional call, then the conditional one
    expected, weight = torch.zeros(1, 6, 4, LATENT, LATENT), torch.zeros(6)
    for k, idx in enumerate(tiles):
        uncond, cond = calls.calls[2 * k]["output"], calls.calls[2 * k + 1]["output"]
        guided = uncond + scales[idx].view(1, 4, 1, 1, 1) * (cond - uncond)
        expected[:, idx] += guided * window.view(1, 4, 1, 1, 1)
        weight[idx] += window
    torch.testing.assert_close(noise_preds[0], expected / weight.view(1, 6, 1, 1, 1), atol=ATOL, rtol=0)
