"""AnimationPipeline with DisPose's motion ControlNet on tiny components, CPU, 2 steps."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines import AnimationPipeline, tile_indices
from pipelines.testing import TINY_POINT_CHANNELS, reinit_zero_layers, tiny_components

SIZE = 32
KEYPOINTS = 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models: thread hand-offs cost more than they save, and far more when the cores are shared
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
