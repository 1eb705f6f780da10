"""AnimationPipeline with DisPose's motion ControlNet on tiny components, CPU, 2 steps."""

from __future__ import annotations

import json

import pytest
import torch

import tests._unet_oracle as oracle
from pipelines import AnimationPipeline, tile_indices
from pipelines.injection import UNetInjector
from pipelines.testing import TINY_POINT_CHANNELS, reinit_zero_layers, tiny_components

SIZE = 32
KEYPOINTS = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_pipe(reinit: bool = False, with_controlnet: bool = True) -> AnimationPipeline:
    components = tiny_components(with_motion_controlnet=with_controlnet)
    if reinit:
        reinit_zero_layers(components["motion_controlnet"])
    pipe = AnimationPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def flows(n: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    """``(n, H, W, 2)`` pixel flows, the GuidanceBundle layout."""
    return torch.randn(n, SIZE, SIZE, 2, generator=_generator(seed)) * scale


def keypoints(n: int, seed: int) -> torch.Tensor:
    points = torch.rand(n, KEYPOINTS, 3, generator=_generator(seed))
    points[..., :2] *= SIZE
    points[..., 2] = 1.0
    return points


def points(n: int, seed: int = 0) -> dict:
    return {
        "point_features": torch.randn(
            1, TINY_POINT_CHANNELS, SIZE // 16, SIZE // 16, generator=_generator(seed)
        ),
        "keypoints": keypoints(n, seed + 1),
        "reference_keypoints": keypoints(1, seed + 2)[0],
    }


def run(pipe: AnimationPipeline, **kwargs):
    inputs = {
        "image": torch.rand(1, 3, SIZE, SIZE, generator=_generator(0)),
        "height": SIZE,
        "width": SIZE,
        "num_inference_steps": 2,
        "generator": _generator(0),
        "output_type": "pt",
        "min_guidance_scale": 1.0,
        "max_guidance_scale": 2.5,
        "noise_aug_strength": 0.02,
    }
    inputs.update(kwargs)
    return pipe(**inputs).frames


def test_fresh_controlnet_leaves_the_frames_exactly_unchanged():
    without = make_pipe(with_controlnet=False)
    pipe = make_pipe()
    motion = {"dense_flow": flows(5, 1), "trajectory_flow": flows(5, 2), **points(5)}
    tiles = {"tile_size": 4, "tile_overlap": 2}
    assert torch.equal(run(pipe, **motion, **tiles), run(without, num_frames=5, **tiles))
    sequential = run(pipe, **motion, cfg_mode="sequential", residual_mode="dispose", num_inference_steps=1)
    assert torch.equal(sequential, run(without, num_frames=5, cfg_mode="sequential", num_inference_steps=1))


def test_flows_change_the_output_and_scale_zero_equals_no_controlnet():
    pipe = make_pipe(reinit=True)
    plain = run(pipe, num_frames=3)  # no motion input: the ControlNet does not run
    assert torch.equal(plain, run(make_pipe(with_controlnet=False), num_frames=3))
    dense_a = run(pipe, dense_flow=flows(3, 1))
    dense_b = run(pipe, dense_flow=flows(3, 2))
    trajectory = run(pipe, trajectory_flow=flows(3, 1))
    assert (dense_a - plain).abs().max() > 1e-3
    assert (dense_a - dense_b).abs().max() > 1e-3
    assert (trajectory - dense_a).abs().max() > 1e-3
    off = run(pipe, dense_flow=flows(3, 1), **points(3), conditioning_scales={"motion": 0.0})
    assert torch.equal(off, plain)


def test_point_features_change_the_output():
    pipe = make_pipe(reinit=True)
    motion = {"dense_flow": flows(3, 1)}
    flow_only = run(pipe, **motion)
    placed = run(pipe, **motion, **points(3))
    moved = run(pipe, **motion, **(points(3) | {"keypoints": keypoints(3, 9)}))
    assert (placed - flow_only).abs().max() > 1e-4
    assert (placed - moved).abs().max() > 1e-4
    hidden = points(3)
    hidden["keypoints"][..., 2] = 0.0  # below keypoint_threshold: nothing placed in the frames
    hidden["reference_keypoints"][..., 2] = 0.0  # ... nor in the prepended reference frame
    assert torch.equal(run(pipe, **motion, **hidden), flow_only)


def test_residual_and_guidance_modes():
    pipe = make_pipe(reinit=True)
    motion = {"dense_flow": flows(4, 1), "trajectory_flow": flows(4, 2), "tile_size": 3, "tile_overlap": 1}
    once = run(pipe, **motion)
    dispose = run(pipe, **motion, residual_mode="dispose")
    assert (once - dispose).abs().max() > 1e-3
    for controlnet_cfg in ("keep", "drop"):
        batched = run(pipe, **motion, controlnet_cfg=controlnet_cfg)
        sequential = run(pipe, **motion, controlnet_cfg=controlnet_cfg, cfg_mode="sequential")
        assert (batched - sequential).abs().max() <= 1e-4, controlnet_cfg  # summation order only
        if controlnet_cfg == "drop":
            assert (batched - once).abs().max() > 1e-3  # the negative half lost the motion residuals


def test_tiles_slice_flows_and_points():
    pipe = make_pipe()
    seen: list[dict] = []
    pipe.motion_controlnet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append({k: v for k, v in kwargs.items() if k != "sample"}),
        with_kwargs=True,
    )
    dense, motion_points = flows(5, 1), points(5)
    run(pipe, dense_flow=dense, **motion_points, tile_size=3, tile_overlap=1, num_inference_steps=1,
        max_guidance_scale=1.0)  # fmt: skip
    tiles = tile_indices(6, 3, 1, anchor_first=True)
    assert len(seen) == len(tiles)  # one step, no CFG: one ControlNet call per tile
    sequence = torch.cat([torch.zeros(1, 2, SIZE, SIZE), dense.permute(0, 3, 1, 2)])  # reference frame first
    positions = (
        torch.cat([motion_points["reference_keypoints"][None], motion_points["keypoints"]])[..., :2] / SIZE
    )
    for idx, call in zip(tiles, seen, strict=True):
        assert torch.equal(call["dense_flow"], sequence[idx])
        torch.testing.assert_close(call["point_positions"], positions[idx])
        assert call["trajectory_flow"] is None and call["point_visible"].all()


def test_flows_on_another_grid_are_resized_and_their_vectors_scaled():
    flow = torch.zeros(2, 16, 8, 2)
    flow[..., 0], flow[..., 1] = 3.0, 5.0
    resized = AnimationPipeline._prepare_flow(flow.numpy(), 32, 32, torch.float32)
    assert resized.shape == (2, 2, 32, 32)
    torch.testing.assert_close(resized[:, 0], torch.full((2, 32, 32), 12.0))  # x: 8 -> 32 columns
    torch.testing.assert_close(resized[:, 1], torch.full((2, 32, 32), 10.0))  # y: 16 -> 32 rows
    channels_first = AnimationPipeline._prepare_flow(flow.permute(0, 3, 1, 2), 16, 8, torch.float16)
    assert channels_first.dtype == torch.float16 and torch.equal(
        channels_first.float(), flow.permute(0, 3, 1, 2)
    )
    with pytest.raises(ValueError, match="flow must be"):
        AnimationPipeline._prepare_flow(torch.zeros(2, 16, 8), 32, 32, torch.float32)


def test_save_pretrained_keeps_the_controlnet_and_its_residual_mode(tmp_path):
    components = tiny_components(with_motion_controlnet=True)
    controlnet = components["motion_controlnet"]
    controlnet.register_to_config(residual_mode="dispose")
    reinit_zero_layers(controlnet)
    pipe = AnimationPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["motion_controlnet"] == ["controlnets.motion_controlnet", "MotionControlNet"]
    loaded = AnimationPipeline.from_pretrained(tmp_path)
    assert loaded.motion_controlnet.config.residual_mode == "dispose"
    ours, theirs = controlnet.state_dict(), loaded.motion_controlnet.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    loaded.set_progress_bar_config(disable=True)
    motion = {"dense_flow": flows(2, 1), **points(2)}
    assert (
        run(loaded, **motion) - run(pipe, **motion)
    ).abs().max() <= 1e-3  # see test_pipeline SAVE_LOAD_ATOL


def test_invalid_motion_inputs_raise_value_errors():
    pipe = make_pipe()
    with pytest.raises(ValueError, match="no `motion_controlnet`"):
        run(make_pipe(with_controlnet=False), dense_flow=flows(2, 1))
    with pytest.raises(ValueError, match="controlnet_cfg"):
        run(pipe, dense_flow=flows(2, 1), controlnet_cfg="maybe")
    with pytest.raises(ValueError, match="residual_mode"):
        run(pipe, dense_flow=flows(2, 1), residual_mode="twice")
    with pytest.raises(ValueError, match="need `keypoints`"):
        run(pipe, num_frames=2, point_features=points(2)["point_features"])
    with pytest.raises(ValueError, match="channels"):
        run(pipe, **(points(2) | {"point_features": torch.zeros(1, 7, 2, 2)}))
    with pytest.raises(ValueError, match="differ in length"):
        run(pipe, dense_flow=flows(2, 1), trajectory_flow=flows(3, 1))
    with pytest.raises(ValueError, match="unknown conditioning scales"):
        run(make_pipe(with_controlnet=False), num_frames=1, conditioning_scales={"motion": 1.0})


def test_model_cpu_offload_with_the_controlnet_gives_the_same_frames():
    pipe = make_pipe(reinit=True)
    motion = {"dense_flow": flows(2, 1), **points(2)}
    expected = run(pipe, **motion)
    pipe.enable_model_cpu_offload(device="cpu")  # real offload needs an accelerator; this exercises the hooks
    assert torch.equal(run(pipe, **motion), expected)


# --- residuals against a written-out UNet forward (tests/_unet_oracle.py): once, DisPose's 4/3/2/1 ---


def test_dispose_residuals_match_dispose_loop_on_svd_layout():
    """SVD's 12 skips take their residual 4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1 times in DisPose's UNet."""
    unet = oracle._svd_layout_unet()
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
            expected = oracle.reference_unet(unet, sample, t, context, ids, down=down, mid=mid, mode=mode)
            torch.testing.assert_close(ours[mode], expected, atol=oracle.ATOL, rtol=0, msg=mode)
        # the same counts by hand: each skip's residual times 4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1, added once
        times = [4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1]
        scaled = [r * n for r, n in zip(down, times, strict=True)]
        by_count = oracle.reference_unet(unet, sample, t, context, ids, down=scaled, mid=mid, mode="once")
    torch.testing.assert_close(ours["dispose"], by_count, atol=1e-4, rtol=0)
    assert (ours["dispose"] - ours["once"]).abs().max() > 10 * oracle.ATOL
    assert (ours["once"] - plain).abs().max() > 10 * oracle.ATOL


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
    pipe = oracle.make_pipe(controlnet=True, residual_mode=config_mode)
    calls, residuals = oracle.UNetCalls(pipe.unet), oracle.ControlNetCalls(pipe.motion_controlnet)
    flow = torch.randn(2, oracle.SIZE, oracle.SIZE, 2, generator=torch.Generator().manual_seed(1)) * 3
    oracle.run(pipe, dense_flow=flow, residual_mode=call_mode, max_guidance_scale=1.0)
    (call,), ((down, mid),) = calls.calls, residuals.outputs
    expected = calls.reference(pipe.unet, call, down=down, mid=mid, mode=expected_mode)
    torch.testing.assert_close(call["output"], expected, atol=oracle.ATOL, rtol=0)
    other = calls.reference(
        pipe.unet, call, down=down, mid=mid, mode=({"once", "dispose"} - {expected_mode}).pop()
    )
    assert (call["output"] - other).abs().max() > 10 * oracle.ATOL  # the two modes are told apart here


@pytest.mark.parametrize("controlnet_cfg", ["keep", "drop"])
def test_controlnet_rows_under_batched_cfg(controlnet_cfg):
    """ "keep": the negative half gets its own residuals (the ControlNet runs on all rows); "drop": none."""
    pipe = oracle.make_pipe(controlnet=True, residual_mode="dispose")
    calls, residuals = oracle.UNetCalls(pipe.unet), oracle.ControlNetCalls(pipe.motion_controlnet)
    flow = torch.randn(2, oracle.SIZE, oracle.SIZE, 2, generator=torch.Generator().manual_seed(1)) * 3
    oracle.run(pipe, dense_flow=flow, controlnet_cfg=controlnet_cfg)
    (call,), ((down, mid),) = calls.calls, residuals.outputs
    rows = call["sample"].shape[0] * call["sample"].shape[1]
    if controlnet_cfg == "drop":
        assert mid.shape[0] == rows // 2
        down = [torch.cat([torch.zeros_like(d), d]) for d in down]
        mid = torch.cat([torch.zeros_like(mid), mid])
    assert mid.shape[0] == rows
    expected = calls.reference(pipe.unet, call, down=down, mid=mid, mode="dispose")
    torch.testing.assert_close(call["output"], expected, atol=oracle.ATOL, rtol=0)


def test_points_reach_the_controlnet_normalised_by_width_and_height():
    """A 48 x 32 (W x H) video: positions are (x / 48, y / 32), the reference frame's first; a point shows
    where its and the reference's scores reach the threshold; each carries the reference feature of the
    cell under the reference keypoint (cell centres sample exactly)."""
    pipe = oracle.make_pipe(controlnet=True)
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
    oracle.run(
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


@pytest.mark.parametrize("controlnet_cfg", ["keep", "drop"])
def test_the_controlnet_sees_the_unets_inputs(controlnet_cfg):
    """DisPose's ControlNet is a copy of the UNet's encoder and must be asked what the UNet is asked: at every
    call the same noisy sample (+ reference latent), timestep, CLIP embedding and added time ids, all rows
    under "keep", the conditional (second) half under "drop". The UNet's inputs are pinned by the SVD oracle
    elsewhere; here the time ids are also the SVD values written out (fps - 1, motion bucket, noise aug)."""
    pipe = oracle.make_pipe(controlnet=True, residual_mode="dispose")
    unet = oracle.UNetCalls(pipe.unet)
    seen: list[dict] = []

    def capture(module, args, kwargs):
        sample, t = args[:2]
        seen.append(
            {
                "sample": sample.clone(),
                "t": torch.as_tensor(t).clone(),
                "encoder_hidden_states": kwargs["encoder_hidden_states"].clone(),
                "added_time_ids": kwargs["added_time_ids"].clone(),
            }
        )

    pipe.motion_controlnet.register_forward_pre_hook(capture, with_kwargs=True)
    flow = torch.randn(2, oracle.SIZE, oracle.SIZE, 2, generator=torch.Generator().manual_seed(1)) * 3
    oracle.run(
        pipe,
        dense_flow=flow,
        controlnet_cfg=controlnet_cfg,
        num_inference_steps=2,
        fps=9,
        motion_bucket_id=100,
        noise_aug_strength=0.05,
    )
    assert len(seen) == len(unet.calls) == 2
    for ours, theirs in zip(seen, unet.calls, strict=True):
        rows = slice(None) if controlnet_cfg == "keep" else slice(theirs["sample"].shape[0] // 2, None)
        torch.testing.assert_close(ours["sample"], theirs["sample"][rows], atol=0, rtol=0)
        torch.testing.assert_close(ours["t"].flatten()[0], theirs["t"].flatten()[0], atol=0, rtol=0)
        torch.testing.assert_close(
            ours["encoder_hidden_states"], theirs["encoder_hidden_states"][rows], atol=0, rtol=0
        )
        torch.testing.assert_close(ours["added_time_ids"], theirs["added_time_ids"][rows], atol=0, rtol=0)
        expected = torch.tensor([8.0, 100.0, 0.05]).expand_as(ours["added_time_ids"])
        torch.testing.assert_close(ours["added_time_ids"], expected.to(ours["added_time_ids"].dtype))
    assert seen[0]["t"].flatten()[0] != seen[1]["t"].flatten()[0]  # the two steps' own timesteps
