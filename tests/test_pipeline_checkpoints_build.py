"""``build_pipeline`` from a tiny SVD folder on disk and ``read_checkpoint``'s file formats, in process.

Every expectation is independent of the loader: the tensors the folder / file was written with (cast by
hand), the classes and configs written next to them, and the stable error codes of ``CheckpointError``.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
from transformers import CLIPImageProcessor

from controlnets import GuidanceEncoder, GuidanceFusion, MotionControlNet, PoseGuider
from pipelines import (
    AnimationPipeline,
    CheckpointError,
    KeyReport,
    build_pipeline,
    check_dispose,
    check_mimicmotion,
    load_champ_guidance_encoders,
    load_dispose,
    load_mimicmotion,
    read_checkpoint,
)
from pipelines.checkpoints import dispose_config, pose_guider_config_from_shapes
from pipelines.testing import reinit_zero_layers, svd_scheduler, tiny_components, tiny_pose_guider, tiny_unet

SVD_PARTS = ("vae", "image_encoder", "unet")


def _assert_same(module: torch.nn.Module, expected: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """``module``'s state dict holds exactly ``expected``'s keys, cast to ``dtype`` by hand."""
    state = module.state_dict()
    assert state.keys() == expected.keys()
    for key, value in state.items():
        assert value.dtype == dtype, key
        assert torch.equal(value, expected[key].to(dtype)), key


def _seeded_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Fresh random values for every tensor of ``module`` (so files written from it differ from the base)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> dict:
    """An SVD diffusers folder in fp32 whose models also ship ``*.fp16.safetensors`` with OTHER values (so a
    test can tell which file was read), the same folder without them, and MimicMotion, DisPose and Champ
    files for its UNet."""
    root = tmp_path_factory.mktemp("svd_build")
    components = tiny_components(with_guidance_encoders=False)
    svd = StableVideoDiffusionPipeline(
        **{k: v for k, v in components.items() if k not in ("pose_guider", "guidance_encoders")}
    )
    # the fp16 files first: the fp32 save then writes each config.json as SVD-xt ships it (fp32)
    fp16 = {}
    for seed, name in enumerate(SVD_PARTS, start=10):
        module = components[name]
        other = (
            type(module)(module.config)
            if name == "image_encoder"
            else type(module).from_config(module.config)
        )
        fp16[name] = {k: v.half() for k, v in _seeded_state(other, seed).items()}
        other.half().save_pretrained(root / "svd" / name, variant="fp16")
    svd.save_pretrained(root / "svd")
    base = {name: {k: v.clone() for k, v in components[name].state_dict().items()} for name in SVD_PARTS}
    shutil.copytree(root / "svd", root / "svd_plain", ignore=shutil.ignore_patterns("*.fp16.*"))
    assert len(list((root / "svd").rglob("*.fp16.safetensors"))) == 3
    assert not list((root / "svd_plain").rglob("*.fp16.*"))

    # MimicMotion: fp16, unet.* and pose_net.* (another UNet than SVD's, same config)
    mm_unet = tiny_unet()
    mm_unet_state = _seeded_state(mm_unet, 20)
    torch.manual_seed(21)
    guider = tiny_pose_guider()
    reinit_zero_layers(guider)
    mm_guider_state = guider.state_dict()
    mimicmotion = {f"unet.{k}": v.half() for k, v in mm_unet_state.items()}
    mimicmotion |= {f"pose_net.{k}": v.half() for k, v in mm_guider_state.items()}
    torch.save(mimicmotion, root / "MimicMotion_tiny.pth")

    # DisPose: the ControlNet's full fp32 state dict, no prefix, derived from the SVD UNet config
    torch.manual_seed(22)
    controlnet = MotionControlNet(**dispose_config(components["unet"].config))
    dispose = _seeded_state(controlnet, 23)
    torch.save(dispose, root / "DisPose_tiny.pth")

    # Champ depth encoder at the published size, in Champ's key layout
    torch.manual_seed(24)
    encoder = GuidanceEncoder()
    reinit_zero_layers(encoder)
    encoder_state = {k: v.clone() for k, v in encoder.state_dict().items()}
    last = len(encoder.blocks) - 1
    champ = {
        (f"attentions.{last}." + k[10:] if k.startswith("attention.") else k): v
        for k, v in encoder_state.items()
    }
    torch.save(champ, root / "guidance_encoder_depth.pth")
    return {
        "root": root,
        "svd": root / "svd",
        "svd_plain": root / "svd_plain",
        "base": base,
        "fp16": fp16,
        "mimicmotion": root / "MimicMotion_tiny.pth",
        "mm": {"unet": mm_unet_state, "pose_guider": mm_guider_state},
        "dispose": root / "DisPose_tiny.pth",
        "dispose_state": dispose,
        "champ": root / "guidance_encoder_depth.pth",
        "champ_state": encoder_state,
    }


def test_fp32_build_is_the_svd_folder_without_conditioning(folder):
    pipe = build_pipeline(folder["svd"], champ_files={}, dtype=torch.float32)
    assert isinstance(pipe, AnimationPipeline)
    for name in SVD_PARTS:
        _assert_same(getattr(pipe, name), folder["base"][name], torch.float32)
    assert pipe.pose_guider is None and pipe.guidance_encoders is None and pipe.motion_controlnet is None
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    expected = {k: v for k, v in svd_scheduler().config.items() if not k.startswith("_")}
    assert {k: pipe.scheduler.config[k] for k in expected} == expected
    assert isinstance(pipe.feature_extractor, CLIPImageProcessor)
    assert pipe.feature_extractor.crop_size == {"height": 32, "width": 32}


def test_a_folder_without_fp16_files_is_read_in_fp32_and_cast_by_default(folder):
    pipe = build_pipeline(folder["svd_plain"])  # the default dtype is half precision
    for name in SVD_PARTS:
        _assert_same(getattr(pipe, name), folder["base"][name], torch.float16)


def test_mimicmotion_dispose_and_champ_parts_come_from_their_files(folder):
    pipe = build_pipeline(
        folder["svd"],
        mimicmotion=folder["mimicmotion"],
        champ_files={"depth": folder["champ"]},
        dtype=torch.float32,
        dispose=folder["dispose"],
    )
    # the file is fp16: its values, widened
    _assert_same(pipe.unet, {k: v.half() for k, v in folder["mm"]["unet"].items()}, torch.float32)
    assert isinstance(pipe.pose_guider, PoseGuider)
    _assert_same(
        pipe.pose_guider, {k: v.half() for k, v in folder["mm"]["pose_guider"].items()}, torch.float32
    )
    assert tuple(pipe.pose_guider.config.block_out_channels) == (8, 16)
    assert isinstance(pipe.motion_controlnet, MotionControlNet)
    assert pipe.motion_controlnet.config.residual_mode == "dispose"
    _assert_same(pipe.motion_controlnet, folder["dispose_state"], torch.float32)
    assert isinstance(pipe.guidance_encoders, GuidanceFusion)
    assert tuple(pipe.guidance_encoders.guidance_types) == ("depth",)
    _assert_same(pipe.guidance_encoders.encoders["depth"], folder["champ_state"], torch.float32)
    for module in (pipe.unet, pipe.pose_guider, pipe.motion_controlnet, pipe.guidance_encoders):
        assert not module.training
    # the VAE and image encoder still come from the SVD folder
    _assert_same(pipe.vae, folder["base"]["vae"], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, None, torch.bfloat16], ids=["fp16", "none", "bf16"])
def test_every_part_takes_the_requested_dtype(folder, dtype):
    # fp16: SVD's own UNet (from its fp16 file; MimicMotion's is fp16 already, so a cast would not show)
    half = dtype == torch.float16
    pipe = build_pipeline(
        folder["svd"],
        mimicmotion=None if half else folder["mimicmotion"],
        champ_files={"depth": folder["champ"]},
        dtype=dtype,
        dispose=folder["dispose"],
    )
    # no dtype: each file's own (SVD fp32, MimicMotion fp16, DisPose and Champ fp32)
    for name in ("vae", "image_encoder"):
        expected = folder["fp16"][name] if half else folder["base"][name]
        _assert_same(getattr(pipe, name), expected, dtype or torch.float32)
    if half:
        _assert_same(pipe.unet, folder["fp16"]["unet"], torch.float16)
        assert pipe.pose_guider is None
    else:
        mm = dtype or torch.float16
        _assert_same(pipe.unet, {k: v.half() for k, v in folder["mm"]["unet"].items()}, mm)
        _assert_same(pipe.pose_guider, {k: v.half() for k, v in folder["mm"]["pose_guider"].items()}, mm)
    _assert_same(pipe.motion_controlnet, folder["dispose_state"], dtype or torch.float32)
    _assert_same(pipe.guidance_encoders.encoders["depth"], folder["champ_state"], dtype or torch.float32)


def test_a_folder_without_model_index_is_refused(folder, tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(
        CheckpointError, match=r"is not a diffusers pipeline directory \(no model_index.json\)"
    ) as err:
        build_pipeline(tmp_path, dtype=torch.float32)
    assert err.value.code == "checkpoint_unreadable"
    assert str(tmp_path) in str(err.value)


def test_a_mimicmotion_file_for_another_unet_is_a_mismatch(folder, tmp_path):
    state = torch.load(folder["mimicmotion"])
    state["unet.conv_in.weight"] = torch.zeros(32, 9, 3, 3, dtype=torch.float16)
    torch.save(state, tmp_path / "mm.pth")
    with pytest.raises(
        CheckpointError, match=r"MimicMotion unet\.\* does not fit: 1 with another shape"
    ) as err:
        build_pipeline(folder["svd"], mimicmotion=tmp_path / "mm.pth", dtype=torch.float32)
    assert err.value.code == "checkpoint_mismatch"


# read_checkpoint: one state dict per format


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {
        "a.weight": torch.randn(3, 4, generator=generator),
        "b.bias": torch.arange(5, dtype=torch.float16),
    }


def _assert_equal_dicts(got: dict, expected: dict) -> None:
    assert isinstance(got, dict) and got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt"])
def test_torch_files_load_as_saved(tmp_path, state, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save(state, path)
    _assert_equal_dicts(read_checkpoint(path), state)
    _assert_equal_dicts(read_checkpoint(str(path)), state)  # a str path too


def test_a_zip_checkpoint_is_memory_mapped_not_read(tmp_path, state):
    path = tmp_path / "model.pth"
    torch.save(state, path)
    loaded = read_checkpoint(path)
    mapped = Path("/proc/self/maps").read_text()
    assert str(path.resolve()) in mapped
    _assert_equal_dicts(loaded, state)


def test_a_legacy_pickle_checkpoint_still_loads(tmp_path, state):
    path = tmp_path / "legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    _assert_equal_dicts(read_checkpoint(path), state)


def test_safetensors_load_as_saved(tmp_path, state):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(state, path)
    _assert_equal_dicts(read_checkpoint(path), state)


def test_a_state_dict_wrapper_is_unwrapped(tmp_path, state):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state, "epoch": 3, "optimizer": {"lr": 1.0}}, path)
    _assert_equal_dicts(read_checkpoint(path), state)


def test_a_state_dict_key_that_is_not_a_dict_is_just_a_key(tmp_path, state):
    path = tmp_path / "flat.pth"
    flat = dict(state) | {"state_dict": torch.zeros(2)}
    torch.save(flat, path)
    _assert_equal_dicts(read_checkpoint(path), flat)


@pytest.mark.parametrize(
    ("content", "kind"), [([torch.zeros(2)], "list"), (torch.zeros(2), "Tensor"), ((1, 2), "tuple")]
)
def test_a_file_that_holds_no_dict_is_not_a_state_dict(tmp_path, content, kind):
    path = tmp_path / "other.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert err.value.code == "not_a_state_dict"
    assert str(err.value) == f"{path} holds a {kind}, not a state dict"


def test_a_missing_file_is_unreadable(tmp_path):
    for path in (tmp_path / "absent.pth", tmp_path):  # nothing there, or a directory
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(path)
        assert err.value.code == "checkpoint_unreadable"
        assert str(err.value) == f"{path} does not exist"


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_truncated_or_foreign_file_is_unreadable(tmp_path, state, suffix):
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, whole)
    else:
        torch.save(state, whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    text = tmp_path / f"readme{suffix}"
    text.write_text("<html>404 Not Found</html>")
    for path in (cut, text):
        with pytest.raises(CheckpointError, match="cannot be read as a checkpoint: ") as err:
            read_checkpoint(path)
        assert err.value.code == "checkpoint_unreadable"
        assert str(err.value).startswith(f"{path} cannot be read")


def test_a_missing_safetensors_file_is_unreadable(tmp_path):
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tmp_path / "absent.safetensors")
    assert err.value.code == "checkpoint_unreadable"


def test_a_pickle_with_code_in_it_is_refused(tmp_path, state):
    # a training script's checkpoint: the weights plus its argparse options (an arbitrary class to unpickle)
    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint") as err:
        read_checkpoint(path)
    assert err.value.code == "checkpoint_unreadable"
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)


# key reports and their messages


def test_a_checkpoint_error_is_a_mismatch_unless_told():
    assert CheckpointError("x").code == "checkpoint_mismatch"
    assert CheckpointError("x", "wrong_checkpoint").code == "wrong_checkpoint"
    assert isinstance(CheckpointError("x"), ValueError)


def test_describe_lists_five_of_each_kind_then_counts():
    missing = [f"m{i}" for i in range(7)]
    unexpected = ["u0", "u1"]
    mismatched = [(f"s{i}", (i,), (i + 1,)) for i in range(6)]
    report = KeyReport(missing=missing, unexpected=unexpected, mismatched=mismatched)
    shapes = ", ".join(f"s{i}: file ({i},) vs model ({i + 1},)" for i in range(5))
    assert report.describe() == (
        f"7 missing (e.g. m0, m1, m2, m3, m4); 2 unexpected (e.g. u0, u1); 6 with another shape ({shapes})"
    )
    assert (
        report.describe(limit=1)
        == "7 missing (e.g. m0); 2 unexpected (e.g. u0); 6 with another shape (s0: file (0,) vs model (1,))"
    )
    assert not report.ok
    assert KeyReport().describe() == "all keys match" and KeyReport().ok
    assert KeyReport(unexpected=["u"]).describe() == "1 unexpected (e.g. u)"


def test_a_pose_guider_narrower_than_the_unets_conv_in_is_reported(folder):
    state = torch.load(folder["mimicmotion"])
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    reports = check_mimicmotion(shapes, tiny_unet().config)
    assert set(reports) == {"unet", "pose_guider"}
    assert reports["unet"].ok and reports["pose_guider"].ok
    # a guider whose final_proj gives 64 channels: the tiny UNet's conv_in gives 32 (its first block width)
    torch.manual_seed(0)
    wide = PoseGuider(block_out_channels=(8, 16), out_channels=64)
    shapes = {k: v for k, v in shapes.items() if k.startswith("unet.")}
    shapes |= {f"pose_net.{k}": tuple(v.shape) for k, v in wide.state_dict().items()}
    reports = check_mimicmotion(shapes, tiny_unet().config)
    assert reports["unet"].ok
    assert reports["pose_guider"].mismatched == [
        ("final_proj out channels vs the UNet's conv_in", (64,), (32,))
    ]


def test_a_mimicmotion_file_is_not_taken_for_dispose(folder):
    state = torch.load(folder["mimicmotion"])
    config = tiny_unet().config
    with pytest.raises(CheckpointError) as err:
        check_dispose({k: tuple(v.shape) for k, v in state.items()}, config)
    assert str(err.value) == "this is a MimicMotion checkpoint, not DisPose's ControlNet"
    assert err.value.code == "wrong_checkpoint"
    with pytest.raises(CheckpointError) as err:
        load_dispose(state, config)
    assert str(err.value) == "this is a MimicMotion checkpoint, not DisPose's ControlNet"
    assert err.value.code == "wrong_checkpoint"


def test_a_champ_file_lacking_keys_names_five_of_them(folder):
    state = torch.load(folder["champ"])
    lacking = [k for k in state if k.startswith(("conv_in", "blocks.0", "blocks.1", "blocks.2"))]
    assert len(lacking) > 5
    kept = {k: v for k, v in state.items() if k not in lacking}
    with pytest.raises(CheckpointError) as err:
        load_champ_guidance_encoders({"depth": kept})
    assert str(err.value) == f"Champ depth encoder lacks {len(lacking)} keys: {tuple(lacking[:5])}"


def test_the_pose_guider_config_is_read_off_its_shapes():
    guider = PoseGuider(conditioning_channels=4, block_out_channels=(8, 16, 24), out_channels=40)
    shapes = {f"pose_net.{k}": tuple(v.shape) for k, v in guider.state_dict().items()}
    assert pose_guider_config_from_shapes(shapes) == {
        "conditioning_channels": 4,
        "block_out_channels": (8, 16, 24),
        "out_channels": 40,
    }
    plain = {k.removeprefix("pose_net."): v for k, v in shapes.items()}  # the prefix is optional
    assert pose_guider_config_from_shapes(plain) == pose_guider_config_from_shapes(shapes)


@pytest.mark.parametrize("broken", ["no final_proj", "no convs", "a conv missing"])
def test_a_state_without_a_pose_guider_layout_is_refused(broken):
    shapes = {k: tuple(v.shape) for k, v in tiny_pose_guider().state_dict().items()}
    if broken == "no final_proj":
        shapes = {k: v for k, v in shapes.items() if not k.startswith("final_proj")}
    elif broken == "no convs":
        shapes = {k: v for k, v in shapes.items() if not k.startswith("conv_layers")}
    else:
        shapes = {k: v for k, v in shapes.items() if not k.startswith("conv_layers.4.")}
    with pytest.raises(CheckpointError) as err:
        pose_guider_config_from_shapes(shapes)
    assert str(err.value) == "no pose guider layout (conv_layers.*, final_proj) in the checkpoint"
    assert err.value.code == "checkpoint_mismatch"


def test_a_dispose_file_missing_a_key_names_it(folder):
    state = torch.load(folder["dispose"])
    key = next(iter(state))
    del state[key]
    with pytest.raises(CheckpointError) as err:
        load_dispose(state, tiny_unet().config)
    assert str(err.value) == f"DisPose ControlNet does not fit: 1 missing (e.g. {key})"
    assert err.value.code == "checkpoint_mismatch"


def test_keys_outside_the_two_prefixes_name_the_wrong_checkpoint(folder):
    state = torch.load(folder["mimicmotion"])
    stray = {f"model.layer{i}.weight": torch.zeros(1) for i in range(6)}
    with pytest.raises(CheckpointError) as err:
        load_mimicmotion(state | stray, tiny_unet().config)
    shown = ", ".join(f"model.layer{i}.weight" for i in range(5))
    assert (
        str(err.value) == f"6 keys outside unet.* / pose_net.* (e.g. {shown}); not a MimicMotion checkpoint"
    )
    assert err.value.code == "wrong_checkpoint"


def test_a_mimicmotion_guider_that_does_not_fit_is_named(folder):
    state = torch.load(folder["mimicmotion"])
    del state["pose_net.scale"]
    with pytest.raises(CheckpointError) as err:
        load_mimicmotion(state, tiny_unet().config, tiny_pose_guider().config)
    assert str(err.value) == "MimicMotion pose_net.* does not fit: 1 missing (e.g. scale)"
    assert err.value.code == "checkpoint_mismatch"


def test_a_legacy_pickle_with_code_in_it_is_refused_too(tmp_path, state):
    path = tmp_path / "legacy_with_args.pth"
    torch.save(
        {"state_dict": state, "args": argparse.Namespace(lr=1.0)}, path, _use_new_zipfile_serialization=False
    )
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint") as err:
        read_checkpoint(path)
    assert err.value.code == "checkpoint_unreadable"
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)


def test_loaded_weights_own_their_storage_even_in_the_files_dtype(folder, tmp_path):
    # DisPose.pth's tensors as views of one storage: without a copy the ControlNet would share (and
    # memory-map) it, and safetensors refuses shared tensors
    state = torch.load(folder["dispose"])
    flat = torch.cat([v.reshape(-1) for v in state.values()])
    shared, offset = {}, 0
    for key, value in state.items():
        shared[key] = flat[offset : offset + value.numel()].view(value.shape)
        offset += value.numel()
    torch.save(shared, tmp_path / "shared.pth")
    controlnet = load_dispose(tmp_path / "shared.pth", tiny_unet().config)
    tensors = list(controlnet.state_dict().values())
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == len(tensors)
    _assert_same(controlnet, folder["dispose_state"], torch.float32)
