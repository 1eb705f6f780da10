"""``build_pipeline`` from a tiny SVD folder on disk and ``read_checkpoint``'s file formats, in process.

Every expectation is independent of the loader: the tensors the folder / file was written with (cast by
hand), the classes and configs written next to them, and the stable error codes of ``CheckpointError``.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
from transformers import CLIPImageProcessor

from controlnets import GuidanceEncoder, GuidanceFusion, MotionControlNet, PoseGuider
from pipelines import AnimationPipeline, CheckpointError, build_pipeline, read_checkpoint
from pipelines.checkpoints import dispose_config
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
    """An SVD diffusers folder in fp32 whose UNet and VAE also ship ``*.fp16.safetensors`` with OTHER values
    (so a test can tell which file was read), plus MimicMotion, DisPose and Champ files for its UNet."""
    root = tmp_path_factory.mktemp("svd_build")
    components = tiny_components(with_guidance_encoders=False)
    svd = StableVideoDiffusionPipeline(
        **{k: v for k, v in components.items() if k not in ("pose_guider", "guidance_encoders")}
    )
    svd.save_pretrained(root / "svd")
    base = {name: {k: v.clone() for k, v in components[name].state_dict().items()} for name in SVD_PARTS}
    fp16 = {}
    for seed, name in enumerate(("unet", "vae"), start=10):
        other = type(components[name]).from_config(components[name].config)
        fp16[name] = {k: v.half() for k, v in _seeded_state(other, seed).items()}
        other.half().save_pretrained(root / "svd" / name, variant="fp16")

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
    pipe = build_pipeline(folder["svd"], dtype=torch.float32)
    assert isinstance(pipe, AnimationPipeline)
    for name in SVD_PARTS:
        _assert_same(getattr(pipe, name), folder["base"][name], torch.float32)
    assert pipe.pose_guider is None and pipe.guidance_encoders is None and pipe.motion_controlnet is None
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    expected = {k: v for k, v in svd_scheduler().config.items() if not k.startswith("_")}
    assert {k: pipe.scheduler.config[k] for k in expected} == expected
    assert isinstance(pipe.feature_extractor, CLIPImageProcessor)
    assert pipe.feature_extractor.crop_size == {"height": 32, "width": 32}


def test_fp16_build_reads_the_fp16_variant_files_where_a_component_ships_them(folder):
    pipe = build_pipeline(folder["svd"], dtype=torch.float16)
    _assert_same(pipe.unet, folder["fp16"]["unet"], torch.float16)
    _assert_same(pipe.vae, folder["fp16"]["vae"], torch.float16)
    # the image encoder ships no fp16 file: its fp32 weights, cast
    _assert_same(pipe.image_encoder, folder["base"]["image_encoder"], torch.float16)


@pytest.mark.parametrize(
    ("dtype", "expected"), [(None, torch.float32), (torch.bfloat16, torch.bfloat16)], ids=["none", "bf16"]
)
def test_other_dtypes_read_the_plain_files(folder, dtype, expected):
    pipe = build_pipeline(folder["svd"], dtype=dtype)
    for name in SVD_PARTS:
        _assert_same(getattr(pipe, name), folder["base"][name], expected)


def test_default_dtype_is_half_precision(folder):
    pipe = build_pipeline(folder["svd"])
    _assert_same(pipe.unet, folder["fp16"]["unet"], torch.float16)


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
    pipe = build_pipeline(
        folder["svd"],
        mimicmotion=folder["mimicmotion"],
        champ_files={"depth": folder["champ"]},
        dtype=dtype,
        dispose=folder["dispose"],
    )
    # no dtype: each file's own (MimicMotion fp16, DisPose and Champ fp32)
    mm = dtype or torch.float16
    _assert_same(pipe.unet, {k: v.half() for k, v in folder["mm"]["unet"].items()}, mm)
    _assert_same(pipe.pose_guider, {k: v.half() for k, v in folder["mm"]["pose_guider"].items()}, mm)
    _assert_same(pipe.motion_controlnet, folder["dispose_state"], dtype or torch.float32)
    _assert_same(pipe.guidance_encoders.encoders["depth"], folder["champ_state"], dtype or torch.float32)


def test_an_empty_champ_mapping_adds_no_encoders(folder):
    pipe = build_pipeline(folder["svd"], champ_files={}, dtype=torch.float32)
    assert pipe.guidance_encoders is None and pipe.pose_guider is None


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
