"""`animate weights check|convert` on a tiny weights directory in the real on-disk layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableVideoDiffusionPipeline

from animate.cli import run
from animate.weights import (
    CHAMP_DIR,
    CHAMP_FILES,
    CMP_FILE,
    CONVERTED_DIR,
    DISPOSE_FILE,
    MIMICMOTION_FILE,
    SD15_DIR,
    SVD_DIR,
    WeightsError,
    convert_weights,
    inspect_weights,
    safetensors_header,
)
from controlnets import GuidanceEncoder, MotionControlNet
from pipelines import AnimationPipeline, build_pipeline
from pipelines.checkpoints import dispose_config
from pipelines.testing import reinit_zero_layers, tiny_components, tiny_pose_guider


def _write_mimicmotion(path: Path, unet: torch.nn.Module, prefix: str = "unet.") -> None:
    torch.manual_seed(3)
    guider = tiny_pose_guider()
    reinit_zero_layers(guider)
    state = {f"{prefix}{k}": v.half() for k, v in unet.state_dict().items()}
    state |= {f"pose_net.{k}": v.half() for k, v in guider.state_dict().items()}
    torch.save(state, path)


def _write_dispose(path: Path, unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """DisPose.pth's layout for this UNet: the ControlNet's full fp32 state dict, no prefix."""
    torch.manual_seed(5)
    controlnet = MotionControlNet.from_unet(unet, **dispose_config(unet.config))
    reinit_zero_layers(controlnet)
    state = controlnet.state_dict()
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    components = tiny_components(with_guidance_encoders=False)
    svd = StableVideoDiffusionPipeline(
        **{k: v for k, v in components.items() if k not in ("pose_guider", "guidance_encoders")}
    )
    svd.save_pretrained(root / SVD_DIR)
    _write_mimicmotion(root / MIMICMOTION_FILE, components["unet"])
    _write_dispose(root / DISPOSE_FILE, components["unet"])
    # one Champ encoder at the published size, in Champ's key layout (with a key its forward never uses)
    torch.manual_seed(4)
    encoder = GuidanceEncoder()
    champ = {
        ("attentions.5." + k[10:] if k.startswith("attention.") else k): v
        for k, v in encoder.state_dict().items()
    }
    champ["guidance_attention.norm.bias"] = torch.zeros(256)
    (root / CHAMP_DIR).mkdir()
    torch.save(champ, root / CHAMP_DIR / CHAMP_FILES["depth"])
    return root


def test_empty_directory_reports_everything_missing(tmp_path):
    report = inspect_weights(tmp_path)
    assert {f.status for f in report.files} == {"missing"}
    assert not any(report.features.values())


def test_check_reports_files_and_features(weights_dir):
    report = inspect_weights(weights_dir)
    status = {f.name: f.status for f in report.files}
    assert status["svd"] == "ok" and status["mimicmotion"] == "ok" and status["champ_depth"] == "ok"
    assert status["champ_normal"] == "missing" and status["converted"] == "missing"
    assert (
        report.features["diffusion"] and report.features["pose_guider"] and report.features["guidance_depth"]
    )
    assert not report.features["fast_load"] and not report.features["guidance_normal"]
    detail = next(f.detail for f in report.files if f.name == "champ_depth")
    assert "1 unused ignored" in detail
    assert status["dispose"] == "ok" and report.features["dispose"]
    assert (
        status["cmp"] == status["sd15"] == "missing" and not report.features["cmp"] | report.features["dift"]
    )


def test_safetensors_header_reads_names_and_shapes_only(weights_dir):
    path = weights_dir / SVD_DIR / "unet" / "diffusion_pytorch_model.safetensors"
    header = safetensors_header(path)
    assert header["conv_in.weight"]["shape"] == [32, 8, 3, 3]
    assert all("data_offsets" in v for v in header.values())


def test_invalid_files_are_reported_with_the_reason(tmp_path, weights_dir):
    root = tmp_path / "w"
    root.mkdir()
    (root / SVD_DIR).symlink_to(weights_dir / SVD_DIR)
    unet = AnimationPipeline.from_pretrained(weights_dir / SVD_DIR).unet
    _write_mimicmotion(root / MIMICMOTION_FILE, unet, prefix="model.")
    (root / CHAMP_DIR).mkdir()
    torch.save({"conv_in.weight": torch.zeros(16, 3, 3, 3)}, root / CHAMP_DIR / CHAMP_FILES["normal"])
    dispose = torch.load(weights_dir / DISPOSE_FILE)
    dispose.pop("point_adapter.model_list.1.mlp.2.bias")
    torch.save(dispose, root / DISPOSE_FILE)
    (root / CMP_FILE).parent.mkdir()
    (root / CMP_FILE).write_bytes(b"truncated download")
    (root / SD15_DIR / "unet").mkdir(parents=True)
    report = inspect_weights(root)
    files = {f.name: f for f in report.files}
    assert files["mimicmotion"].status == "invalid" and "outside unet" in files["mimicmotion"].detail
    assert files["champ_normal"].status == "invalid" and "lacks" in files["champ_normal"].detail
    assert files["dispose"].status == "invalid" and "1 missing" in files["dispose"].detail
    assert "model_list.1.mlp.2.bias" in files["dispose"].detail
    assert files["cmp"].status == "invalid" and "readable" in files["cmp"].detail
    assert files["sd15"].status == "invalid" and "no vae/" in files["sd15"].detail
    assert not report.features["diffusion"] and not report.features["dispose"]
    assert not report.features["cmp"] and not report.features["dift"]


def test_cli_check_prints_a_table_and_json(weights_dir, capsys):
    assert run(["weights", "check", "--dir", str(weights_dir)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and MIMICMOTION_FILE in out and "features:" in out
    assert run(["weights", "check", "--dir", str(weights_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["features"]["diffusion"] is True
    assert {f["name"] for f in data["files"]} >= {"svd", "mimicmotion", "converted"}


def test_convert_writes_one_pipeline_directory_that_loads_identically(weights_dir, tmp_path):
    out = tmp_path / CONVERTED_DIR
    assert run(["weights", "convert", "--dir", str(weights_dir), "--out", str(out), "--dtype", "fp32"]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "AnimationPipeline"
    assert index["pose_guider"][0].startswith("controlnets") and index["pose_guider"][1] == "PoseGuider"
    assert index["guidance_encoders"][1] == "GuidanceFusion"
    assert index["motion_controlnet"][1] == "MotionControlNet"
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))

    direct = build_pipeline(
        weights_dir / SVD_DIR,
        mimicmotion=weights_dir / MIMICMOTION_FILE,
        champ_files={"depth": weights_dir / CHAMP_DIR / CHAMP_FILES["depth"]},
        dtype=torch.float32,
        dispose=weights_dir / DISPOSE_FILE,
    )
    loaded = AnimationPipeline.from_pretrained(out)
    assert loaded.motion_controlnet.config.residual_mode == "dispose"  # how DisPose's weights were trained
    for name in ("unet", "pose_guider", "guidance_encoders", "motion_controlnet"):
        a, b = getattr(direct, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    loaded.set_progress_bar_config(disable=True)
    frames = loaded(
        torch.rand(1, 3, 32, 32), pose_images=torch.rand(2, 3, 32, 32), height=32, width=32,
        num_inference_steps=1, output_type="np",
    ).frames  # fmt: skip
    assert frames.shape == (1, 2, 32, 32, 3)

    # the default output directory inside the weights dir is what `check` reports as fast_load
    link = tmp_path / "w"
    link.mkdir()
    (link / SVD_DIR).symlink_to(weights_dir / SVD_DIR)
    (link / CONVERTED_DIR).symlink_to(out)
    report = inspect_weights(link)
    assert report.features["fast_load"] and report.features["diffusion"] and report.features["dispose"]


def test_convert_refuses_bad_input(tmp_path, weights_dir, capsys):
    assert run(["weights", "convert", "--dir", str(tmp_path)]) == 2
    assert "weights_missing" in capsys.readouterr().err
    with pytest.raises(WeightsError, match="dtype"):
        convert_weights(weights_dir, out=tmp_path / "x", dtype="int8")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(WeightsError) as excinfo:
        convert_weights(weights_dir, out=tmp_path / "busy")
    assert excinfo.value.code == "output_exists"


def test_cmp_verdict_is_remembered_until_the_file_changes(tmp_path):
    from test_cmp import save_cmp_checkpoint

    from controlnets.cmp import CMPFlow

    path = tmp_path / CMP_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated download")
    first = next(f for f in inspect_weights(tmp_path).files if f.name == "cmp")
    again = next(f for f in inspect_weights(tmp_path).files if f.name == "cmp")
    assert first.status == "invalid" and again is first  # not read a second time
    save_cmp_checkpoint(path, CMPFlow())  # the user finishes the download: a new size and mtime
    report = inspect_weights(tmp_path)
    assert next(f for f in report.files if f.name == "cmp").status == "ok" and report.features["cmp"]
