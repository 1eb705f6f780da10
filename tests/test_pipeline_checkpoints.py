"""MimicMotion_1-1.pth and Champ encoder loading: key-exact against the manifests, strict on tiny files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_manifest

from controlnets import GuidanceEncoder, PoseGuider
from pipelines import (
    AnimationPipeline,
    CheckpointError,
    check_mimicmotion,
    load_champ_guidance_encoders,
    load_mimicmotion,
)
from pipelines.checkpoints import pose_guider_config_from_shapes
from pipelines.testing import (
    reinit_zero_layers,
    tiny_components,
    tiny_guidance_encoders,
    tiny_pose_guider,
    tiny_unet,
)


def test_every_mimicmotion_key_maps_to_a_parameter_of_the_same_shape():
    manifest = load_manifest("mimicmotion_1_1.json")
    unet_config = load_manifest("svd_xt_unet_config.json")
    shapes = {k: tuple(v) for k, v in manifest["keys"].items()}
    reports = check_mimicmotion(shapes, unet_config)
    for name, report in reports.items():
        assert report.ok, f"{name}: {report.describe()}"
    guider_config = pose_guider_config_from_shapes(
        {k: v for k, v in shapes.items() if k.startswith("pose_net.")}
    )
    assert guider_config == {k: v for k, v in PoseGuider().config.items() if k in guider_config}
    with torch.device("meta"):
        unet, guider = load_mimicmotion(
            {k: torch.empty(v, device="meta", dtype=torch.float16) for k, v in shapes.items()}, unet_config
        )
    assert sum(p.numel() for p in unet.parameters()) == manifest["param_count_unet"]
    assert sum(p.numel() for p in guider.parameters()) == manifest["param_count_pose_net"]
    assert len(unet.state_dict()) + len(guider.state_dict()) == manifest["num_keys"] == 1447


def _tiny_mimicmotion_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint in MimicMotion's layout: fp16, ``unet.``/``pose_net.`` prefixes, views of one storage."""
    torch.manual_seed(0)
    unet, guider = tiny_unet(), tiny_pose_guider()
    reinit_zero_layers(guider)
    state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    state |= {f"pose_net.{k}": v for k, v in guider.state_dict().items()}
    flat = torch.cat([v.reshape(-1).half() for v in state.values()])
    shared, offset = {}, 0
    for key, value in state.items():
        shared[key] = flat[offset : offset + value.numel()].view(value.shape)
        offset += value.numel()
    path = tmp_path / "MimicMotion_tiny.pth"
    torch.save(shared, path)
    return path, shared


def test_tiny_checkpoint_with_the_same_layout_loads_strictly(tmp_path):
    path, shared = _tiny_mimicmotion_file(tmp_path)
    unet, guider = load_mimicmotion(path, tiny_unet().config, tiny_pose_guider().config, dtype=torch.float32)
    assert unet.dtype == torch.float32 and not unet.training
    for key, value in unet.state_dict().items():
        assert torch.equal(value, shared[f"unet.{key}"].float()), key
    for key, value in guider.state_dict().items():
        assert torch.equal(value, shared[f"pose_net.{key}"].float()), key
    # the loaded weights are owned copies, not views into the file's storage (safetensors refuses shared ones)
    pointers = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    assert len(pointers) == len(list(unet.parameters()))

    components = tiny_components(with_guidance_encoders=False)
    pipe = AnimationPipeline(**(components | {"unet": unet, "pose_guider": guider}))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        torch.rand(1, 3, 32, 32),
        pose_images=torch.rand(2, 3, 32, 32),
        height=32,
        width=32,
        num_inference_steps=1,
        output_type="latent",
    ).frames
    assert out.shape == (1, 2, 4, 16, 16) and torch.isfinite(out).all()
    pipe.save_pretrained(tmp_path / "converted")  # shared storages would make safetensors refuse
    assert (tmp_path / "converted" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_wrong_prefix_missing_keys_and_shapes_are_errors(tmp_path):
    _, shared = _tiny_mimicmotion_file(tmp_path)
    config, guider_config = tiny_unet().config, tiny_pose_guider().config
    renamed = {k.replace("unet.", "model.diffusion_model.", 1): v for k, v in shared.items()}
    with pytest.raises(CheckpointError, match="outside unet"):
        load_mimicmotion(renamed, config, guider_config)
    missing = {k: v for k, v in shared.items() if k != "pose_net.scale"}
    with pytest.raises(CheckpointError, match=r"1 missing.*scale"):
        load_mimicmotion(missing, config, guider_config)
    reshaped = dict(shared) | {"pose_net.final_proj.bias": torch.zeros(7)}
    with pytest.raises(CheckpointError, match="another shape"):
        load_mimicmotion(reshaped, config, guider_config)
    extra = dict(shared) | {"unet.extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="1 unexpected"):
        load_mimicmotion(extra, config, guider_config)


def test_champ_encoders_load_into_a_fusion(tmp_path):
    torch.manual_seed(0)
    source = tiny_guidance_encoders()
    reinit_zero_layers(source)
    files = {}
    for name in ("depth", "semantic"):
        encoder: GuidanceEncoder = source.encoders[name]
        last = len(encoder.blocks) - 1
        champ = {
            (f"attentions.{last}." + k[10:] if k.startswith("attention.") else k): v
            for k, v in encoder.state_dict().items()
        }
        champ["guidance_attention.norm.weight"] = torch.ones(16)  # stored by Champ, unused by its forward
        files[name] = tmp_path / f"guidance_encoder_{name}.pth"
        torch.save(champ, files[name])
    fusion, ignored = load_champ_guidance_encoders(files, tiny_guidance_encoders())
    assert ignored == {
        "depth": ("guidance_attention.norm.weight",),
        "semantic": ("guidance_attention.norm.weight",),
    }
    maps = {"depth": torch.rand(1, 3, 32, 32), "semantic": torch.rand(1, 3, 32, 32)}
    assert torch.equal(fusion(maps), source(maps))
    broken = torch.load(files["depth"]) | {}
    del broken["conv_in.weight"]
    with pytest.raises(CheckpointError, match="lacks 1 keys"):
        load_champ_guidance_encoders({"depth": broken}, tiny_guidance_encoders())
    with pytest.raises(CheckpointError, match="no encoder"):
        load_champ_guidance_encoders({"albedo": broken}, tiny_guidance_encoders())
