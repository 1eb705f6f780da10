"""``--adapter`` folders (``pipelines/adapters.py``) written by hand and loaded over a tiny pipeline, in process.

The folders are built from the layout the module documents (``save_pretrained`` of each part, the temporal
tensors in one safetensors file, peft's LoRA files), so every expectation is the tensor that was written,
or, for the LoRA, the hand-computed ``W x + (alpha / r) B A x`` of one projection.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from controlnets import GuidanceFusion, IdentityAdapter, MotionControlNet, PoseGuider
from pipelines import AnimationPipeline, CheckpointError
from pipelines.adapters import (
    ADAPTER_FILE,
    LORA_TARGETS,
    LORA_WEIGHTS,
    inject_lora,
    is_adapter_dir,
    load_adapter,
    load_lora,
    load_partial_unet,
    read_adapter_info,
    save_lora,
)
from pipelines.testing import (
    tiny_components,
    tiny_guidance_encoders,
    tiny_motion_controlnet,
    tiny_pose_guider,
    tiny_unet,
)

ALL_PARTS = ["pose_guider", "guidance_encoders", "motion_controlnet", "identity_adapter", "unet"]


def _randomise(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _write_info(path: Path, parts: list[str]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / ADAPTER_FILE).write_text(json.dumps({"format": 1, "parts": parts, "steps": 3}))


def _pipeline(with_motion_controlnet: bool = True) -> AnimationPipeline:
    return AnimationPipeline(**tiny_components(with_motion_controlnet=with_motion_controlnet))


def _temporal_state(seed: int) -> dict[str, torch.Tensor]:
    """New values for a few of the tiny UNet's temporal tensors, under its plain keys."""
    own = tiny_unet().state_dict()
    keys = [k for k in own if "temporal" in k][:6]
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(own[k].shape, generator=generator) for k in keys}


def _lora_unet(rank: int, alpha: float, seed: int) -> torch.nn.Module:
    """A tiny UNet with a LoRA whose B is not zero (a trained one)."""
    unet = tiny_unet()
    inject_lora(unet, rank=rank, alpha=alpha)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return unet


def _base_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A (LoRA-injected) UNet's own weights under the plain keys."""
    return {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}


def _assert_state(module: torch.nn.Module, expected: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    state = module.state_dict()
    assert state.keys() == expected.keys()
    for key, value in state.items():
        assert value.dtype == dtype and torch.equal(value, expected[key].to(dtype)), key


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> dict:
    """An adapter folder with every part of the layout."""
    root = tmp_path_factory.mktemp("adapter") / "final"
    _write_info(root, [*ALL_PARTS, "temporal", "lora"])
    states = {}
    torch.manual_seed(0)
    base_unet = tiny_unet()
    modules = {
        "pose_guider": tiny_pose_guider(),
        "guidance_encoders": tiny_guidance_encoders(),
        "motion_controlnet": tiny_motion_controlnet(base_unet),
        "identity_adapter": IdentityAdapter.for_unet(base_unet, num_tokens=2),
        "unet": tiny_unet(),
    }
    for seed, (name, module) in enumerate(modules.items(), start=30):
        states[name] = _randomise(module, seed)
        module.save_pretrained(root / name)
    temporal = _temporal_state(40)
    (root / "unet_temporal").mkdir()
    save_file(temporal, root / "unet_temporal" / "diffusion_pytorch_model.safetensors")
    lora_unet = _lora_unet(rank=4, alpha=8.0, seed=41)
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=8.0, target_modules=list(LORA_TARGETS))
    save_lora(lora_unet, config, root / "unet_lora")
    return {
        "root": root,
        "states": states,
        "temporal": temporal,
        "lora": load_file(root / "unet_lora" / LORA_WEIGHTS),
    }


def test_every_part_replaces_the_pipelines_in_layout_order(adapter):
    pipe = _pipeline()
    assert pipe.identity_adapter is None
    loaded = load_adapter(pipe, adapter["root"])
    assert loaded == [*ALL_PARTS, "unet_temporal", "lora"]
    classes = {
        "pose_guider": PoseGuider,
        "guidance_encoders": GuidanceFusion,
        "motion_controlnet": MotionControlNet,
        "identity_adapter": IdentityAdapter,
    }
    for name, cls in classes.items():
        module = getattr(pipe, name)
        assert type(module) is cls and not module.training
        _assert_state(module, adapter["states"][name], torch.float32)
    # the whole UNet first, then the temporal tensors over it, then the LoRA injected
    expected = adapter["states"]["unet"] | adapter["temporal"]
    _assert_state_subset = _base_state(pipe.unet)
    assert _assert_state_subset.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(_assert_state_subset[key], value), key
    assert not any(m.training for m in pipe.unet.modules())


def test_the_loaded_lora_computes_w_x_plus_scaled_b_a_x(adapter):
    pipe = _pipeline()
    load_adapter(pipe, adapter["root"])
    prefix = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    layer = pipe.unet.get_submodule(prefix)
    weight = adapter["states"]["unet"][f"{prefix}.weight"]
    a, b = adapter["lora"][f"{prefix}.lora_A.weight"], adapter["lora"][f"{prefix}.lora_B.weight"]
    assert a.shape[0] == 4 and b.abs().max() > 0
    x = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(1))
    expected = x @ weight.T + (8.0 / 4) * (x @ a.T @ b.T)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    # every target projection of every attention carries it
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in pipe.unet.named_parameters() if ".lora_A." in n}
    wanted = {
        n
        for n, m in tiny_unet().named_modules()
        if isinstance(m, torch.nn.Linear) and n.endswith(LORA_TARGETS)
    }
    assert adapted == wanted and len(wanted) == 96  # 6 transformers x 4 attentions x 4 projections


def test_only_the_parts_present_are_loaded(adapter, tmp_path):
    root = tmp_path / "final"
    _write_info(root, ["motion_controlnet"])
    (root / "motion_controlnet").symlink_to(adapter["root"] / "motion_controlnet")
    (root / "unet").write_text("a file, not a folder: no part")
    pipe = _pipeline()
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    guider = pipe.pose_guider
    assert load_adapter(pipe, root) == ["motion_controlnet"]
    _assert_state(pipe.motion_controlnet, adapter["states"]["motion_controlnet"], torch.float32)
    assert pipe.pose_guider is guider
    after = pipe.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_parts_take_the_dtype_of_what_they_replace_or_the_unets(adapter, tmp_path):
    root = tmp_path / "final"
    _write_info(root, ["pose_guider", "identity_adapter"])
    for name in ("pose_guider", "identity_adapter"):
        (root / name).symlink_to(adapter["root"] / name)
    pipe = _pipeline()
    pipe.pose_guider.to(torch.bfloat16)
    pipe.unet.to(torch.float16)
    assert load_adapter(pipe, root) == ["pose_guider", "identity_adapter"]
    _assert_state(pipe.pose_guider, adapter["states"]["pose_guider"], torch.bfloat16)
    _assert_state(pipe.identity_adapter, adapter["states"]["identity_adapter"], torch.float16)
    # a requested dtype wins
    pipe = _pipeline()
    assert load_adapter(pipe, root, dtype=torch.bfloat16) == ["pose_guider", "identity_adapter"]
    _assert_state(pipe.pose_guider, adapter["states"]["pose_guider"], torch.bfloat16)
    _assert_state(pipe.identity_adapter, adapter["states"]["identity_adapter"], torch.bfloat16)


def test_parts_land_on_the_device_of_what_they_replace_or_the_unets(adapter, tmp_path):
    root = tmp_path / "final"
    _write_info(root, ["pose_guider", "identity_adapter"])
    for name in ("pose_guider", "identity_adapter"):
        (root / name).symlink_to(adapter["root"] / name)
    pipe = _pipeline()
    pipe.pose_guider.to("meta")
    load_adapter(pipe, root)
    assert {p.device.type for p in pipe.pose_guider.parameters()} == {"meta"}
    assert {p.device.type for p in pipe.identity_adapter.parameters()} == {"cpu"}
    pipe = _pipeline()
    pipe.unet.to("meta")
    load_adapter(pipe, root)
    assert {p.device.type for p in pipe.pose_guider.parameters()} == {"cpu"}
    assert {p.device.type for p in pipe.identity_adapter.parameters()} == {"meta"}


def test_a_lora_adapter_casts_the_unet_to_the_requested_dtype(adapter, tmp_path):
    root = tmp_path / "final"
    _write_info(root, ["lora"])
    (root / "unet_lora").symlink_to(adapter["root"] / "unet_lora")
    pipe = _pipeline()
    assert load_adapter(pipe, root, dtype=torch.bfloat16) == ["lora"]
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}
    pipe = _pipeline()
    pipe.unet.to(torch.float16)
    assert load_adapter(pipe, root) == ["lora"]
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.float16}


def test_a_part_that_does_not_fit_names_its_folder(adapter, tmp_path):
    root = tmp_path / "final"
    _write_info(root, ["pose_guider"])
    (root / "pose_guider").mkdir()
    (root / "pose_guider" / "config.json").write_text(json.dumps(dict(tiny_pose_guider().config)))
    (root / "pose_guider" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError) as err:
        load_adapter(_pipeline(), root)
    assert str(err.value).startswith(f"{root / 'pose_guider'} cannot be loaded as PoseGuider: ")
    assert err.value.code == "checkpoint_mismatch"


def test_adapter_info_is_required_and_checked(tmp_path):
    assert not is_adapter_dir(tmp_path)
    with pytest.raises(CheckpointError) as err:
        read_adapter_info(tmp_path)
    assert err.value.code == "checkpoint_unreadable"
    assert str(err.value) == f"{tmp_path} is not a training output (no adapter.json; pass RUN_DIR/final)"
    with pytest.raises(CheckpointError) as err:
        load_adapter(_pipeline(False), tmp_path)
    assert err.value.code == "checkpoint_unreadable"

    (tmp_path / ADAPTER_FILE).write_text("{not json")
    assert is_adapter_dir(tmp_path) and is_adapter_dir(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"adapter.json is unreadable: ") as err:
        read_adapter_info(tmp_path)
    assert err.value.code == "checkpoint_unreadable"
    for text in ('{"format": 2}', "[1]", "{}", '{"format": "1"}'):
        (tmp_path / ADAPTER_FILE).write_text(text)
        with pytest.raises(CheckpointError) as err:
            read_adapter_info(tmp_path)
        assert str(err.value) == f"{tmp_path / ADAPTER_FILE} is not an adapter description of format 1"
        assert err.value.code == "checkpoint_mismatch"
    info = {"format": 1, "parts": ["lora"], "steps": 7}
    (tmp_path / ADAPTER_FILE).write_text(json.dumps(info))
    assert read_adapter_info(str(tmp_path)) == info
    (tmp_path / ADAPTER_FILE).unlink()
    (tmp_path / ADAPTER_FILE).mkdir()  # a folder named adapter.json
    assert not is_adapter_dir(tmp_path)


def test_inject_lora_is_an_exact_no_op_with_the_configured_rank():
    unet = tiny_unet()
    reference = {k: v.clone() for k, v in unet.state_dict().items()}
    config = inject_lora(unet, rank=3)
    assert config.r == 3 and config.lora_alpha == 3 and config.lora_dropout == 0.0
    assert set(config.target_modules) == set(LORA_TARGETS)
    assert config.init_lora_weights == "gaussian"
    assert _base_state(unet).keys() == reference.keys()
    layer = unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2.to_k")
    assert layer.lora_A["default"].weight.shape[0] == 3
    assert layer.lora_A["default"].weight.abs().max() > 0 and layer.lora_B["default"].weight.abs().max() == 0
    x = torch.randn(2, layer.in_features)
    assert torch.equal(
        layer(x), x @ reference["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"].T
    )
    other = inject_lora(tiny_unet(), rank=2, alpha=5.0, dropout=0.25)
    assert (other.r, other.lora_alpha, other.lora_dropout) == (2, 5.0, 0.25)


def test_save_lora_writes_peft_files_without_the_adapter_name(tmp_path):
    unet = _lora_unet(rank=2, alpha=2.0, seed=3)
    config = inject_lora(tiny_unet(), rank=2)
    save_lora(unet, config, tmp_path / "deep" / "unet_lora")
    folder = tmp_path / "deep" / "unet_lora"
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 2
    saved = load_file(folder / LORA_WEIGHTS)
    own = {k.replace(".default", ""): v for k, v in unet.state_dict().items() if "lora_" in k}
    assert saved.keys() == own.keys() and len(saved) == 192  # A and B of 96 projections
    assert all(torch.equal(saved[k], own[k]) for k in own)
    save_lora(unet, config, folder)  # an existing folder is overwritten


def test_load_lora_keeps_the_unets_mode_and_refuses_what_does_not_fit(tmp_path):
    source = _lora_unet(rank=2, alpha=2.0, seed=5)
    from peft import LoraConfig

    save_lora(source, LoraConfig(r=2, lora_alpha=2.0, target_modules=list(LORA_TARGETS)), tmp_path / "lora")
    for training in (False, True):
        unet = tiny_unet().train(training)
        load_lora(unet, tmp_path / "lora")
        assert {m.training for m in unet.modules()} == {training}
        got = {k: v for k, v in unet.state_dict().items() if "lora_" in k}
        want = {k: v for k, v in source.state_dict().items() if "lora_" in k}
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

    with pytest.raises(CheckpointError) as err:
        load_lora(tiny_unet(), tmp_path / "absent")
    assert err.value.code == "checkpoint_unreadable"
    assert str(err.value).startswith(f"{tmp_path / 'absent'} is not a readable LoRA folder: ")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "adapter_config.json").write_text(
        (tmp_path / "lora" / "adapter_config.json").read_text()
    )
    (tmp_path / "cut" / LORA_WEIGHTS).write_bytes(b"\x01" * 9)
    with pytest.raises(CheckpointError) as err:
        load_lora(tiny_unet(), tmp_path / "cut")
    assert err.value.code == "checkpoint_unreadable"

    # a LoRA without one projection's weights (a file from another run or UNet)
    state = load_file(tmp_path / "lora" / LORA_WEIGHTS)
    dropped = [k for k in state if ".to_v.lora_B" in k]
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "adapter_config.json").write_text(
        (tmp_path / "lora" / "adapter_config.json").read_text()
    )
    save_file({k: v for k, v in state.items() if k not in dropped}, tmp_path / "part" / LORA_WEIGHTS)
    with pytest.raises(CheckpointError) as err:
        load_lora(tiny_unet(), tmp_path / "part")
    assert str(err.value).startswith(
        f"LoRA in {tmp_path / 'part'} does not fit the UNet: {len(dropped)} missing, 0 unexpected"
    )
    assert err.value.code == "checkpoint_mismatch"
    named = ast.literal_eval(str(err.value).split("(e.g. ", 1)[1][:-1])
    assert len(named) == 3 and all(".to_v.lora_B" in name for name in named)  # three of the missing
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "adapter_config.json").write_text(
        (tmp_path / "lora" / "adapter_config.json").read_text()
    )
    save_file(
        state | {"down_blocks.7.attn.to_q.lora_A.weight": torch.zeros(2, 4)},
        tmp_path / "extra" / LORA_WEIGHTS,
    )
    with pytest.raises(CheckpointError, match=r"does not fit the UNet: 0 missing, 1 unexpected") as err:
        load_lora(tiny_unet(), tmp_path / "extra")
    named = ast.literal_eval(str(err.value).split("(e.g. ", 1)[1][:-1])
    assert len(named) == 1 and "down_blocks.7.attn.to_q.lora_A" in named[0]  # the unexpected one


def test_load_partial_unet_assigns_exactly_the_files_tensors(tmp_path):
    unet = tiny_unet().to(torch.bfloat16)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    temporal = _temporal_state(9)
    save_file(temporal, tmp_path / "t.safetensors")
    load_partial_unet(unet, tmp_path / "t.safetensors")
    for key, value in unet.state_dict().items():
        expected = temporal[key].to(torch.bfloat16) if key in temporal else before[key]
        assert value.dtype == torch.bfloat16 and torch.equal(value, expected), key

    key = next(iter(temporal))
    cases = {
        "unknown": (
            {"nope.weight": torch.zeros(1)},
            "1 unknown keys, 0 of another shape (e.g. ['nope.weight'])",
        ),
        "shape": ({key: torch.zeros(1)}, f"0 unknown keys, 1 of another shape (e.g. ['{key}'])"),
        "empty": ({}, "0 unknown keys, 0 of another shape (e.g. [])"),
    }
    for name, (state, detail) in cases.items():
        save_file(state, tmp_path / f"{name}.safetensors")
        unet = tiny_unet()
        reference = {k: v.clone() for k, v in unet.state_dict().items()}
        with pytest.raises(CheckpointError) as err:
            load_partial_unet(unet, tmp_path / f"{name}.safetensors")
        assert str(err.value) == f"{tmp_path / f'{name}.safetensors'} does not fit the UNet: {detail}"
        assert err.value.code == "checkpoint_mismatch"
        assert all(torch.equal(v, reference[k]) for k, v in unet.state_dict().items())  # nothing half-loaded
    for bad in (tmp_path / "absent.safetensors", tmp_path / "cut.safetensors"):
        if bad.name == "cut.safetensors":
            bad.write_bytes(b"\x02" * 5)
        with pytest.raises(CheckpointError) as err:
            load_partial_unet(tiny_unet(), bad)
        assert err.value.code == "checkpoint_unreadable" and str(err.value).startswith(
            f"{bad} is unreadable: "
        )


def test_a_partial_unet_error_names_three_keys(tmp_path):
    save_file({f"nope{i}.weight": torch.zeros(1) for i in range(5)}, tmp_path / "t.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_partial_unet(tiny_unet(), tmp_path / "t.safetensors")
    assert str(err.value).endswith(
        "5 unknown keys, 0 of another shape (e.g. ['nope0.weight', 'nope1.weight', 'nope2.weight'])"
    )


def test_an_adapter_json_that_is_a_folder_is_unreadable(tmp_path):
    (tmp_path / ADAPTER_FILE).mkdir()
    assert not is_adapter_dir(tmp_path)
    with pytest.raises(CheckpointError, match=r"adapter\.json is unreadable: ") as err:
        read_adapter_info(tmp_path)
    assert err.value.code == "checkpoint_unreadable"


def test_a_part_whose_weights_do_not_match_its_config_is_refused(adapter, tmp_path):
    root = tmp_path / "final"
    _write_info(root, ["pose_guider"])
    shutil.copytree(adapter["root"] / "pose_guider", root / "pose_guider")
    config = json.loads((root / "pose_guider" / "config.json").read_text())
    (root / "pose_guider" / "config.json").write_text(json.dumps(config | {"out_channels": 64}))
    with pytest.raises(CheckpointError) as err:
        load_adapter(_pipeline(False), root)
    assert str(err.value).startswith(f"{root / 'pose_guider'} cannot be loaded as PoseGuider: ")
    assert "final_proj" in str(err.value) and err.value.code == "checkpoint_mismatch"


def test_a_pipeline_without_such_a_part_gets_it_on_the_unets_dtype(adapter, tmp_path):
    from diffusers import StableVideoDiffusionPipeline

    root = tmp_path / "final"
    _write_info(root, ["pose_guider"])
    (root / "pose_guider").symlink_to(adapter["root"] / "pose_guider")
    components = tiny_components(with_guidance_encoders=False)
    svd = StableVideoDiffusionPipeline(
        **{k: v for k, v in components.items() if k not in ("pose_guider", "guidance_encoders")}
    )
    svd.unet.to(torch.bfloat16)
    assert not hasattr(svd, "pose_guider")
    assert load_adapter(svd, root) == ["pose_guider"]
    _assert_state(svd.pose_guider, adapter["states"]["pose_guider"], torch.bfloat16)
