"""DisPose's motion ControlNet and point adapter: key-exact with DisPose.pth, strict loading, residual modes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_manifest
from diffusers import UNetSpatioTemporalConditionModel

from controlnets import MotionControlNet, PointAdapter
from pipelines import CheckpointError, UNetInjector, check_dispose, load_dispose, skip_multiplicities
from pipelines.checkpoints import dispose_config
from pipelines.testing import TINY_POINT_CHANNELS, reinit_zero_layers, tiny_motion_controlnet, tiny_unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- key-exact with the published checkpoint -------------------------------------------------------


def test_default_config_is_key_and_shape_exact_with_dispose_pth():
    manifest = load_manifest("dispose_controlnet.json")
    unet_config = load_manifest("svd_xt_unet_config.json")
    shapes = {k: tuple(v) for k, v in manifest["keys"].items()}
    with torch.device("meta"):
        default = MotionControlNet()
        derived = MotionControlNet(**dispose_config(unet_config))
    for controlnet in (default, derived):
        ours = {k: tuple(v.shape) for k, v in controlnet.state_dict().items()}
        assert list(ours) == list(shapes)  # same keys, nothing extra, even the same order
        assert ours == shapes
        assert sum(p.numel() for p in controlnet.parameters()) == manifest["param_count"]
    assert derived.config.residual_mode == "dispose" and default.config.residual_mode == "once"
    assert check_dispose(shapes, unet_config).ok
    by_module = manifest["param_count_by_top_level_module"]
    assert sum(p.numel() for p in default.point_adapter.parameters()) == by_module["point_adapter"]
    assert (
        sum(p.numel() for p in default.controlnet_cond_embedding.parameters())
        == by_module["controlnet_cond_embedding"]
    )
    with torch.device("meta"):  # the loader itself, on placeholder tensors of the published shapes
        loaded = load_dispose({k: torch.empty(v, device="meta") for k, v in shapes.items()}, unet_config)
    assert loaded.config.residual_mode == "dispose" and not loaded.training


def test_check_dispose_names_what_does_not_fit():
    manifest = load_manifest("dispose_controlnet.json")
    unet_config = load_manifest("svd_xt_unet_config.json")
    shapes = {k: tuple(v) for k, v in manifest["keys"].items()}
    shapes.pop("point_adapter.model_list.0.mlp.0.weight")
    shapes["controlnet_mid_block.weight"] = (640, 1280, 1, 1)
    shapes["up_blocks.0.resnets.0.conv1.weight"] = (1280, 2560, 3, 3)
    report = check_dispose(shapes, unet_config)
    assert report.missing == ["point_adapter.model_list.0.mlp.0.weight"]
    assert report.unexpected == ["up_blocks.0.resnets.0.conv1.weight"]
    assert [m[0] for m in report.mismatched] == ["controlnet_mid_block.weight"]
    with pytest.raises(CheckpointError) as excinfo:
        check_dispose({"unet.conv_in.weight": (320, 8, 3, 3)}, unet_config)
    assert excinfo.value.code == "wrong_checkpoint"


def _tiny_dispose_file(tmp_path: Path) -> tuple[Path, MotionControlNet]:
    """A tiny ControlNet's full state dict saved as DisPose.pth is: torch.save, fp32, no prefix."""
    torch.manual_seed(0)
    controlnet = tiny_motion_controlnet(tiny_unet())
    reinit_zero_layers(controlnet)
    path = tmp_path / "DisPose.pth"
    torch.save(controlnet.state_dict(), path)
    return path, controlnet


def test_tiny_checkpoint_with_the_same_layout_loads_strictly(tmp_path):
    path, source = _tiny_dispose_file(tmp_path)
    config = dict(source.config) | {"residual_mode": "dispose"}
    loaded = load_dispose(path, tiny_unet().config, controlnet_config=config)
    assert not loaded.training and loaded.config.residual_mode == "dispose"
    expected = source.state_dict()
    state = loaded.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    half = load_dispose(path, tiny_unet().config, controlnet_config=config, dtype=torch.float16)
    assert half.dtype == torch.float16


def test_loading_refuses_files_that_do_not_fit(tmp_path):
    path, source = _tiny_dispose_file(tmp_path)
    config = dict(source.config)
    state = torch.load(path)
    state.pop("controlnet_cond_embedding.conv_final.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"1 missing.*conv_final.bias.*1 unexpected") as excinfo:
        load_dispose(tmp_path / "broken.pth", tiny_unet().config, controlnet_config=config)
    assert excinfo.value.code == "checkpoint_mismatch"
    torch.save({f"unet.{k}": v for k, v in tiny_unet().state_dict().items()}, tmp_path / "mimic.pth")
    with pytest.raises(CheckpointError) as excinfo:
        load_dispose(tmp_path / "mimic.pth", tiny_unet().config, controlnet_config=config)
    assert excinfo.value.code == "wrong_checkpoint"
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as excinfo:
        load_dispose(tmp_path / "junk.pth", tiny_unet().config, controlnet_config=config)
    assert excinfo.value.code == "checkpoint_unreadable"


# --- the module ------------------------------------------------------------------------------------


def test_from_unet_copies_the_unet_parts_and_starts_as_an_exact_no_op():
    torch.manual_seed(0)
    unet = tiny_unet()
    controlnet = tiny_motion_controlnet(unet)
    for name in ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block"):
        ours, theirs = getattr(controlnet, name).state_dict(), getattr(unet, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert controlnet.num_skip_connections == 6  # conv_in + (2 resnets + downsampler) + 2 resnets
    inputs = _controlnet_inputs(controlnet)
    down, mid = controlnet(**inputs, return_dict=False)
    assert len(down) == 6 and all(not r.any() for r in (*down, mid))
    assert [tuple(r.shape[1:]) for r in down] == [(32, 16, 16)] * 3 + [(32, 8, 8)] + [(64, 8, 8)] * 2


def _controlnet_inputs(controlnet: MotionControlNet, frames: int = 2, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    keypoints = torch.rand(frames, 5, 2, generator=generator)
    return {
        "sample": torch.randn(1, frames, 8, 16, 16, generator=generator),
        "timestep": torch.tensor(1.0),
        "encoder_hidden_states": torch.randn(1, 1, 32, generator=generator),
        "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]]),
        "dense_flow": torch.randn(frames, 2, 32, 32, generator=generator) * 4,
        "trajectory_flow": torch.randn(frames, 2, 32, 32, generator=generator),
        "point_embeddings": torch.randn(frames, 5, TINY_POINT_CHANNELS, generator=generator),
        "point_positions": keypoints,
        "point_visible": torch.ones(frames, 5, dtype=torch.bool),
    }


def test_each_input_steers_the_residuals_and_scale_multiplies_them():
    torch.manual_seed(0)
    controlnet = tiny_motion_controlnet(tiny_unet())
    reinit_zero_layers(controlnet)
    inputs = _controlnet_inputs(controlnet)
    base_down, base_mid = controlnet(**inputs, return_dict=False)
    for name, value in (
        ("dense_flow", inputs["dense_flow"] * 2),
        ("trajectory_flow", inputs["trajectory_flow"] * 2),
        ("point_positions", inputs["point_positions"].flip(1)),
    ):
        _, mid = controlnet(**(inputs | {name: value}), return_dict=False)
        assert (mid - base_mid).abs().max() > 1e-4, name
    half_down, half_mid = controlnet(**inputs, conditioning_scale=0.5, return_dict=False)
    torch.testing.assert_close(half_mid, base_mid * 0.5)
    torch.testing.assert_close(half_down[3], base_down[3] * 0.5)
    hidden = controlnet(
        **(inputs | {"point_visible": torch.zeros(2, 5, dtype=torch.bool)}), return_dict=False
    )
    without = controlnet(**(inputs | {"point_embeddings": None}), return_dict=False)
    assert torch.equal(hidden[1], without[1])  # invisible points place nothing
    small = {"dense_flow": inputs["dense_flow"][:, :, :16, :16], "trajectory_flow": None}
    with pytest.raises(ValueError, match="does not fit the latent"):
        controlnet(**(inputs | small))
    with pytest.raises(ValueError, match="differ"):
        controlnet(**(inputs | {"dense_flow": small["dense_flow"]}))


def _reference_controlnet(
    controlnet: MotionControlNet, inputs: dict, scale: float
) -> tuple[list, torch.Tensor]:
    """DisPose's ControlNetSVDModel.forward written out: both flow branches (conv, SiLU, ..., conv_out)
    summed through conv_final and added after conv_in; the point adapter's level k added to the sample
    after down block k (not to its skips); each skip and the mid output through its 1x1 conv, times scale."""
    sample = inputs["sample"]
    batch, frames = sample.shape[:2]
    t = inputs["timestep"].reshape(-1).expand(batch)
    emb = controlnet.time_embedding(controlnet.time_proj(t).to(sample.dtype))
    ids = controlnet.add_time_proj(inputs["added_time_ids"].flatten()).reshape(batch, -1)
    emb = (emb + controlnet.add_embedding(ids)).repeat_interleave(frames, dim=0)
    context = inputs["encoder_hidden_states"].repeat_interleave(frames, dim=0)
    embedding = controlnet.controlnet_cond_embedding

    def branch(name: str, flow: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.silu(getattr(embedding, f"conv_in_{name}")(flow))
        for conv in getattr(embedding, f"blocks_{name}"):
            x = torch.nn.functional.silu(conv(x))
        return getattr(embedding, f"conv_out_{name}")(x)

    motion = embedding.conv_final(
        branch("flow", inputs["dense_flow"]) + branch("traj", inputs["trajectory_flow"])
    )
    x = controlnet.conv_in(sample.flatten(0, 1)) + motion
    indicator = torch.zeros(batch, frames)
    sizes = [(8, 8), (8, 8)]  # the sample after each tiny down block (16 -> 8, then 8)
    points = controlnet.point_adapter(
        inputs["point_embeddings"], inputs["point_positions"], inputs["point_visible"], sizes
    )
    skips = [x]
    for index, block in enumerate(controlnet.down_blocks):
        kwargs = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
        x, res = block(hidden_states=x, temb=emb, image_only_indicator=indicator, **kwargs)
        x = x + points[index]
        skips += list(res)
    x = controlnet.mid_block(
        hidden_states=x, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator
    )
    down = [conv(s) * scale for s, conv in zip(skips, controlnet.controlnet_down_blocks, strict=True)]
    return down, controlnet.controlnet_mid_block(x) * scale


@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_residuals_equal_dispose_controlnet_forward(scale):
    torch.manual_seed(0)
    controlnet = tiny_motion_controlnet(tiny_unet()).eval()
    reinit_zero_layers(controlnet)
    inputs = _controlnet_inputs(controlnet)
    inputs["point_visible"][0, 1] = False
    with torch.no_grad():
        down, mid = controlnet(**inputs, conditioning_scale=scale, return_dict=False)
        expected_down, expected_mid = _reference_controlnet(controlnet, inputs, scale)
    torch.testing.assert_close(mid, expected_mid, atol=1e-5, rtol=0)
    assert len(down) == len(expected_down) == 6
    for ours, theirs in zip(down, expected_down, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_point_adapter_places_reference_features_at_target_positions():
    torch.manual_seed(0)
    adapter = PointAdapter(embedding_channels=4, channels=(3, 5), mid_channels=6)
    features = torch.zeros(1, 4, 4, 8)
    features[0, :, 1, 2] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # the cell centre of (row 1, column 2) on a 4 x 8 grid, normalised
    embedding = PointAdapter.sample_reference(features, torch.tensor([[2.5 / 8, 1.5 / 4]]))
    torch.testing.assert_close(embedding, torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]))

    embeddings = torch.tensor([[[1.0, 0, 0, 0], [3.0, 0, 0, 0], [0, 5.0, 0, 0]]])
    positions = torch.tensor([[[0.30, 0.60], [0.32, 0.62], [0.9, 0.1]]])  # the first two share a cell
    visible = torch.tensor([[True, True, False]])
    maps = adapter(embeddings, positions, visible, sizes=[(4, 8), (2, 4)])
    assert [tuple(m.shape) for m in maps] == [(1, 3, 4, 8), (1, 5, 2, 4)]
    occupied = maps[0].abs().sum(1)[0] > 0
    assert occupied.nonzero().tolist() == [
        [2, 2]
    ]  # floor(0.6 * 4), floor(0.3 * 8); the hidden point: nowhere
    mean = torch.tensor([2.0, 0, 0, 0])  # the two points in one cell are averaged
    torch.testing.assert_close(maps[0][0, :, 2, 2], adapter.model_list[0](mean))
    assert (maps[1][0].abs().sum(0) > 0).nonzero().tolist() == [[1, 1]]


# --- residual modes: how often each skip connection receives its residual ---------------------------


def four_block_unet() -> UNetSpatioTemporalConditionModel:
    """SVD's block layout (4 down blocks, 2 layers each: 12 skip connections) at tiny widths."""
    return UNetSpatioTemporalConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=2,
        cross_attention_dim=32,
        num_attention_heads=2,
        projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
    ).eval()


def _received_skips(unet, injector: UNetInjector, **residuals) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run ``unet`` and return the skip tensors its up blocks received (in skip order) and the mid output."""
    received: dict[int, torch.Tensor] = {}
    mid: list[torch.Tensor] = []

    def capture(block_index):
        def hook(module, args, kwargs):
            for skip, value in zip(
                injector._up_skips[block_index], kwargs["res_hidden_states_tuple"], strict=True
            ):
                received[skip] = value.clone()

        return hook

    # registered after the injector's own hooks, so they see what the blocks really receive
    handles = [
        b.register_forward_pre_hook(capture(i), with_kwargs=True) for i, b in enumerate(unet.up_blocks)
    ]
    handles.append(unet.mid_block.register_forward_hook(lambda m, a, out: mid.append(out.clone())))
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 2, 8, 8, 8, generator=generator)
    context = torch.randn(1, 1, 32, generator=generator)
    with torch.no_grad(), injector.controlnet_residuals(**residuals):
        unet(sample, 1.0, context, added_time_ids=torch.tensor([[6.0, 127.0, 0.02]]))
    for handle in handles:
        handle.remove()
    return [received[i] for i in sorted(received)], mid[0]


@pytest.mark.parametrize(
    ("mode", "expected"), [("dispose", [4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1]), ("once", [1] * 12)]
)
def test_additions_per_skip_connection(mode, expected):
    torch.manual_seed(0)
    unet = four_block_unet()
    assert skip_multiplicities(unet, mode) == expected
    with UNetInjector(unet) as injector:
        plain, plain_mid = _received_skips(unet, injector, down=None, mid=None)
        ones = [torch.ones_like(skip) for skip in plain]
        skips, mid = _received_skips(unet, injector, down=ones, mid=torch.ones_like(plain_mid), mode=mode)
    counts = [round(float((after - before).mean())) for after, before in zip(skips, plain, strict=True)]
    assert counts == expected
    assert round(float((mid - plain_mid).mean())) == 1  # the mid block gets its residual once in both modes
    # with half the rows skipped (the unconditional half of a batched CFG call) those rows get nothing
    with UNetInjector(unet) as injector:
        halves = [torch.ones_like(skip[1:]) for skip in plain]
        skips, _ = _received_skips(unet, injector, down=halves, mid=None, mode=mode, skip_rows=1)
    assert torch.equal(skips[0][:1], plain[0][:1])
    assert round(float((skips[0][1:] - plain[0][1:]).mean())) == expected[0]


def test_svd_xt_layout_multiplicities_and_bad_residuals():
    unet_config = load_manifest("svd_xt_unet_config.json")
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel.from_config(unet_config)
    assert skip_multiplicities(unet, "dispose") == [4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1]
    with pytest.raises(ValueError, match="residual mode"):
        skip_multiplicities(unet, "twice")
    tiny = tiny_unet()
    with (
        UNetInjector(tiny) as injector,
        pytest.raises(ValueError, match="5 down residuals"),
        injector.controlnet_residuals([torch.zeros(1)] * 5, None),
    ):
        pass
    assert not any(b._forward_pre_hooks for b in tiny.up_blocks) and not tiny.mid_block._forward_hooks
