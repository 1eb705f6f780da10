"""Trained parts (``animate train run``'s ``RUN_DIR/final``) loaded over a base ``AnimationPipeline``.

Layout of an adapter folder, every entry optional except ``adapter.json``:

    adapter.json                      {"format": 1, "parts": [...], "steps": N, ...}: what training wrote
    pose_guider/                      ``PoseGuider.save_pretrained``          -> replaces ``pipeline.pose_guider``
    guidance_encoders/                ``GuidanceFusion.save_pretrained``      -> replaces ``pipeline.guidance_encoders``
    motion_controlnet/                ``MotionControlNet.save_pretrained``    -> replaces ``pipeline.motion_controlnet``
    unet_temporal/                    the trained temporal layers' tensors only (``TEMPORAL_WEIGHTS``),
                                      loaded over ``pipeline.unet``'s (every key must exist, same shape)
    unet/                             a whole UNet (``save_pretrained``)     -> replaces ``pipeline.unet``
    unet_lora/                        peft LoRA on the UNet's attention (``adapter_config.json`` +
                                      ``adapter_model.safetensors``), injected into the (new) UNet, unmerged

Each module is read with ``from_pretrained`` (config + safetensors), so a part that does not fit the base
(another width, another guidance type set) fails with ``CheckpointError`` naming the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import UNetSpatioTemporalConditionModel

from controlnets import GuidanceFusion, IdentityAdapter, MotionControlNet, PoseGuider
from pipelines.checkpoints import CheckpointError

ADAPTER_FILE = "adapter.json"
ADAPTER_FORMAT = 1
MODULE_PARTS: dict[str, type] = {
    "pose_guider": PoseGuider,
    "guidance_encoders": GuidanceFusion,
    "motion_controlnet": MotionControlNet,
    "identity_adapter": IdentityAdapter,
    "unet": UNetSpatioTemporalConditionModel,
}
LORA_DIR = "unet_lora"
TEMPORAL_DIR = "unet_temporal"
TEMPORAL_WEIGHTS = "diffusion_pytorch_model.safetensors"
LORA_WEIGHTS = "adapter_model.safetensors"
# the UNet attention projections LoRA adapts (spatial and temporal transformer blocks)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_FILE).is_file()


def read_adapter_info(path: str | Path) -> dict[str, Any]:
    """``adapter.json`` of an adapter folder; ``CheckpointError`` when it is missing or not ours."""
    path = Path(path)
    try:
        info = json.loads((path / ADAPTER_FILE).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"{path} is not a training output (no {ADAPTER_FILE}; pass RUN_DIR/final)",
            "checkpoint_unreadable",
        ) from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / ADAPTER_FILE} is unreadable: {exc}", "checkpoint_unreadable") from exc
    if not isinstance(info, dict) or info.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(
            f"{path / ADAPTER_FILE} is not an adapter description of format {ADAPTER_FORMAT}"
        )
    return info


def inject_lora(unet: torch.nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0):
    """Add peft LoRA layers (``LORA_TARGETS``, gaussian A, zero B: an exact no-op) to ``unet``; returns the
    ``LoraConfig``."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=dropout,
        init_lora_weights="gaussian",
        target_modules=list(LORA_TARGETS),
    )
    inject_adapter_in_model(config, unet)
    return config


def save_lora(unet: torch.nn.Module, config: Any, path: str | Path) -> None:
    """The LoRA weights of ``unet`` (peft's state dict, adapter name stripped) and their config."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(path))
    state = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    save_file(state, str(path / LORA_WEIGHTS))


def load_lora(unet: torch.nn.Module, path: str | Path) -> None:
    """Inject the LoRA of ``path`` into ``unet`` and load its weights; every LoRA key must land."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        config = LoraConfig.from_pretrained(str(path))
        state = load_file(str(path / LORA_WEIGHTS))
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a truncated or foreign file
        raise CheckpointError(
            f"{path} is not a readable LoRA folder: {exc}", "checkpoint_unreadable"
        ) from exc
    was_training = unet.training
    inject_adapter_in_model(config, unet)
    unet.train(was_training)  # the new LoRA layers take the UNet's mode (eval for inference)
    result = set_peft_model_state_dict(unet, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"LoRA in {path} does not fit the UNet: {len(missing)} missing, "
            f"{len(result.unexpected_keys)} unexpected (e.g. {(missing or result.unexpected_keys)[:3]})"
        )


def load_partial_unet(unet: torch.nn.Module, file: str | Path) -> None:
    """Assign the tensors of ``file`` (plain UNet keys) over ``unet``'s, strictly: each must name a tensor of
    the UNet with the same shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(file))
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{file} is unreadable: {exc}", "checkpoint_unreadable") from exc
    own = unet.state_dict()
    unknown = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    if unknown or mismatched or not state:
        raise CheckpointError(
            f"{file} does not fit the UNet: {len(unknown)} unknown keys, {len(mismatched)} of another shape "
            f"(e.g. {(unknown + mismatched)[:3]})"
        )
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))


def load_adapter(pipeline: Any, path: str | Path, dtype: torch.dtype | None = None) -> list[str]:
    """Load the parts of adapter folder ``path`` into ``pipeline`` (modules replaced, LoRA injected);
    returns the names of the parts loaded, in layout order. Modules come back in eval mode, on the device
    of the part they replace (the UNet's when there was none)."""
    path = Path(path)
    read_adapter_info(path)
    loaded = []
    device = pipeline.unet.device
    for name, cls in MODULE_PARTS.items():
        folder = path / name
        if not folder.is_dir():
            continue
        old = getattr(pipeline, name, None)
        target_dtype = dtype or (old.dtype if old is not None else pipeline.unet.dtype)
        try:
            module = cls.from_pretrained(str(folder), dtype=target_dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{folder} cannot be loaded as {cls.__name__}: {exc}") from exc
        pipeline.register_modules(**{name: module.to(old.device if old is not None else device).eval()})
        loaded.append(name)
    if (path / TEMPORAL_DIR).is_dir():
        load_partial_unet(pipeline.unet, path / TEMPORAL_DIR / TEMPORAL_WEIGHTS)
        loaded.append("unet_temporal")
    if (path / LORA_DIR).is_dir():
        load_lora(pipeline.unet, path / LORA_DIR)
        pipeline.unet.to(pipeline.unet.device, dtype=dtype or pipeline.unet.dtype)
        loaded.append("lora")
    return loaded
