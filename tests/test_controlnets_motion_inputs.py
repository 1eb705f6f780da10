"""MotionControlNet's inputs: Python-scalar and 1-element timesteps equal the same value as a tensor, the
default output is the ``MotionControlNetOutput`` whose fields equal the tuple, a batch of two videos equals two
one-video runs stacked, incomplete point arguments are refused, and on a three-level ControlNet (the point
grid is the first down block's output, deeper levels are resized from it) the residuals equal DisPose's
forward written out. Zero-initialised output layers are re-initialised so every path shows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from controlnets.motion_controlnet import MotionControlNet, MotionControlNetOutput
from pipelines.testing import TINY_POINT_CHANNELS, reinit_zero_layers, tiny_motion_controlnet, tiny_unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES = 3  # != the batch of 2 below, so (batch, frames) and (frames, frames) shapes differ


@pytest.fixture(scope="module")
def controlnet() -> MotionControlNet:
    torch.manual_seed(0)
    module = tiny_motion_controlnet(tiny_unet()).eval()
    reinit_zero_layers(module)
    return module


def make_inputs(batch: int, frames: int = FRAMES, seed: int = 0, size: int = 16, points: int = 5) -> dict:
    """Inputs for ``batch`` videos; flows at 2x the latent (the tiny flow branches downsample by 2)."""
    generator = torch.Generator().manual_seed(seed)
    rows = batch * frames
    visible = torch.rand(rows, points, generator=generator) > 0.2
    return {
        "sample": torch.randn(batch, frames, 8, size, size, generator=generator),
        "encoder_hidden_states": torch.randn(batch, 1, 32, generator=generator),
        "added_time_ids": torch.rand(batch, 3, generator=generator) * torch.tensor([10.0, 255.0, 0.1]),
        "dense_flow": torch.randn(rows, 2, 2 * size, 2 * size, generator=generator) * 4,
        "trajectory_flow": torch.randn(rows, 2, 2 * size, 2 * size, generator=generator),
        "point_embeddings": torch.randn(rows, points, TINY_POINT_CHANNELS, generator=generator),
        "point_positions": torch.rand(rows, points, 2, generator=generator),
        "point_visible": visible,
    }


def run(controlnet: MotionControlNet, inputs: dict, timestep, **kwargs) -> tuple:
    with torch.no_grad():
        return controlnet(**inputs, timestep=timestep, return_dict=False, **kwargs)


def assert_same(a: tuple, b: tuple, atol: float = 0.0) -> None:
    (down_a, mid_a), (down_b, mid_b) = a, b
    assert len(down_a) == len(down_b)
    for x, y in zip((*down_a, mid_a), (*down_b, mid_b), strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


# --- timesteps -------------------------------------------------------------------------------------


def test_python_float_timestep_equals_the_same_value_as_a_tensor(controlnet):
    inputs = make_inputs(1)
    expected = run(controlnet, inputs, torch.tensor([2.5]))
    assert_same(run(controlnet, inputs, 2.5), expected, atol=1e-6)  # not truncated to 2
    assert_same(run(controlnet, inputs, torch.tensor(2.5)), expected, atol=1e-6)  # 0-d tensor
    # the time embedding really depends on it: 2 (what an integer cast would give) is another residual
    other = run(controlnet, inputs, torch.tensor([2.0]))
    assert (other[1] - expected[1]).abs().max() > 1e-4


def test_python_int_timestep_equals_the_same_value_as_a_tensor(controlnet):
    inputs = make_inputs(1)
    expected = run(controlnet, inputs, torch.tensor([7.0]))
    assert_same(run(controlnet, inputs, 7), expected, atol=1e-6)
    assert_same(run(controlnet, inputs, torch.tensor(7)), expected, atol=1e-6)


def test_one_scalar_timestep_serves_every_video_of_a_batch(controlnet):
    inputs = make_inputs(2)
    expected = run(controlnet, inputs, torch.tensor([4.0, 4.0]))
    assert_same(run(controlnet, inputs, 4.0), expected, atol=1e-6)
    assert_same(run(controlnet, inputs, 4), expected, atol=1e-6)
    assert_same(run(controlnet, inputs, torch.tensor(4.0)), expected, atol=1e-6)
    assert_same(run(controlnet, inputs, torch.tensor([4.0])), expected, atol=1e-6)


# --- the output ------------------------------------------------------------------------------------


def test_default_output_is_the_dataclass_with_the_tuples_residuals(controlnet):
    inputs = make_inputs(1) | {"timestep": torch.tensor([3.0])}
    with torch.no_grad():
        down, mid = controlnet(**inputs, return_dict=False)
        default = controlnet(**inputs)  # return_dict defaults to True
        explicit = controlnet(**inputs, return_dict=True)
    for output in (default, explicit):
        assert isinstance(output, MotionControlNetOutput)
        assert isinstance(output.down_block_res_samples, tuple)
        assert len(output.down_block_res_samples) == len(down) == 6
        for ours, theirs in zip(output.down_block_res_samples, down, strict=True):
            assert torch.equal(ours, theirs)
        assert torch.equal(output.mid_block_res_sample, mid)
    assert mid.abs().max() > 0  # re-initialised: the residuals are not trivially equal zeros


# --- batches ---------------------------------------------------------------------------------------


def rows_of(inputs: dict, video: int, frames: int = FRAMES) -> dict:
    """One video's inputs out of a batch: per-video tensors by index, per-frame ones by row range."""
    per_video = ("sample", "encoder_hidden_states", "added_time_ids")
    rows = slice(video * frames, (video + 1) * frames)
    return {k: v[video : video + 1] if k in per_video else v[rows] for k, v in inputs.items()}


def test_a_batch_of_two_videos_equals_two_single_runs_stacked(controlnet):
    inputs = make_inputs(2, seed=3)
    timesteps = torch.tensor([2.0, 9.0])  # different times and time ids per video
    down, mid = run(controlnet, inputs, timesteps)
    singles = [run(controlnet, rows_of(inputs, v), timesteps[v : v + 1]) for v in range(2)]
    expected_down = [torch.cat([s[0][i] for s in singles]) for i in range(len(down))]
    expected_mid = torch.cat([s[1] for s in singles])
    assert mid.shape[0] == 2 * FRAMES
    assert_same((down, mid), (expected_down, expected_mid), atol=2e-5)
    # the two videos really differ (a mix-up of their rows would show)
    assert (singles[0][1] - singles[1][1]).abs().max() > 1e-3


# --- point arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["point_positions", "point_visible"])
def test_point_embeddings_without_positions_or_visibility_are_refused(controlnet, missing):
    inputs = make_inputs(1) | {missing: None}
    with pytest.raises(ValueError) as info:
        run(controlnet, inputs, 1.0)
    assert str(info.value) == "point_embeddings need point_positions and point_visible"


def test_positions_and_visibility_without_embeddings_place_nothing(controlnet):
    inputs = make_inputs(1)
    expected = run(controlnet, inputs | {"point_embeddings": None}, 1.0)
    no_points = {"point_embeddings": None, "point_positions": None, "point_visible": None}
    assert_same(run(controlnet, inputs | no_points, 1.0), expected)


# --- three levels: the point grid is the first down block's output --------------------------------


def three_level_controlnet() -> MotionControlNet:
    """Latent 16 -> 8 (block 0) -> 4 (block 1) -> 4 (block 2): levels 1 and 2 resize the 8 x 8 point grid."""
    torch.manual_seed(0)
    module = MotionControlNet(
        sample_size=16,
        in_channels=8,
        down_block_types=(
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        block_out_channels=(32, 32, 64),
        addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=96,
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=2,
        num_frames=FRAMES,
        conditioning_embedding_out_channels=(8, 16),
        point_embedding_channels=TINY_POINT_CHANNELS,
        point_mid_channels=8,
    ).eval()
    reinit_zero_layers(module)
    return module


def reference_forward(controlnet: MotionControlNet, inputs: dict, timesteps: torch.Tensor, sizes) -> tuple:
    """DisPose's ControlNetSVDModel.forward written out for per-video timesteps; point features from
    ``PointAdapter.forward`` on the given level sizes (placed on the grid of ``sizes[0]``)."""
    sample = inputs["sample"]
    batch, frames = sample.shape[:2]
    emb = controlnet.time_embedding(controlnet.time_proj(timesteps))
    ids = controlnet.add_time_proj(inputs["added_time_ids"].flatten()).reshape(batch, -1)
    emb = (emb + controlnet.add_embedding(ids)).repeat_interleave(frames, dim=0)
    context = inputs["encoder_hidden_states"].repeat_interleave(frames, dim=0)
    embedding = controlnet.controlnet_cond_embedding

    def branch(name: str, flow: torch.Tensor) -> torch.Tensor:
        x = F.silu(getattr(embedding, f"conv_in_{name}")(flow))
        for conv in getattr(embedding, f"blocks_{name}"):
            x = F.silu(conv(x))
        return getattr(embedding, f"conv_out_{name}")(x)

    motion = embedding.conv_final(
        branch("flow", inputs["dense_flow"]) + branch("traj", inputs["trajectory_flow"])
    )
    x = controlnet.conv_in(sample.flatten(0, 1)) + motion
    indicator = torch.zeros(batch, frames)
    points = controlnet.point_adapter(
        inputs["point_embeddings"], inputs["point_positions"], inputs["point_visible"], sizes
    )
    skips = [x]
    for index, block in enumerate(controlnet.down_blocks):
        kwargs = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
        x, res = block(hidden_states=x, temb=emb, image_only_indicator=indicator, **kwargs)
        assert tuple(x.shape[-2:]) == sizes[index]
        x = x + points[index]
        skips += list(res)
    x = controlnet.mid_block(
        hidden_states=x, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator
    )
    down = [conv(s) for s, conv in zip(skips, controlnet.controlnet_down_blocks, strict=True)]
    return down, controlnet.controlnet_mid_block(x)


def test_three_levels_place_points_on_the_first_blocks_grid_and_resize_it_deeper():
    controlnet = three_level_controlnet()
    inputs = make_inputs(2, seed=5, points=12)
    timesteps = torch.tensor([3.0, 6.0])
    with torch.no_grad():
        down, mid = run(controlnet, inputs, timesteps)
        expected = reference_forward(controlnet, inputs, timesteps, [(8, 8), (4, 4), (4, 4)])
        # the points matter here: without them the residuals differ
        without = run(controlnet, inputs | {"point_embeddings": None}, timesteps)
    assert len(down) == controlnet.num_skip_connections == 6  # conv_in + (1 + 1) + (1 + 1) + 1
    assert_same((down, mid), expected, atol=2e-5)
    assert (without[1] - mid).abs().max() > 1e-3


def test_a_float64_controlnet_gives_the_float32_residuals(controlnet):
    """The time projections are float32 in diffusers: they must follow the model's dtype."""
    inputs = make_inputs(2, seed=7)
    expected = run(controlnet, inputs, torch.tensor([2.0, 5.0]))
    double = MotionControlNet.from_config(controlnet.config).double().eval()
    double.load_state_dict(controlnet.state_dict())
    # flows may stay float32: the motion branches cast them to the model's dtype
    flows = ("dense_flow", "trajectory_flow")
    as_double = {k: v.double() if v.is_floating_point() and k not in flows else v for k, v in inputs.items()}
    down, mid = run(double, as_double, torch.tensor([2.0, 5.0]))
    assert mid.dtype == torch.float64 and all(r.dtype == torch.float64 for r in down)
    assert_same((down, mid), ([r.double() for r in expected[0]], expected[1].double()), atol=1e-4)
