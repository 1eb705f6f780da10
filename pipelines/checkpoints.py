"""Loading the published checkpoints into our modules, strictly, without reading gigabytes into RAM.

- ``MimicMotion_1-1.pth``: one pickle with ``unet.*`` (diffusers' ``UNetSpatioTemporalConditionModel``
  keys) and ``pose_net.*`` (our ``PoseGuider``'s keys). Upstream loads it with ``strict=False``, where a
  wrong prefix silently loads nothing; here every key must land on a parameter of the same shape.
- Champ ``guidance_encoder_*.pth``: mapped with ``controlnets.convert_champ_state_dict``.
- ``DisPose.pth``: the full state dict of DisPose's ControlNet (no prefix, fp32), key-exact with our
  ``MotionControlNet`` built from the SVD-xt UNet config; loaded with ``residual_mode="dispose"``, the way
  its weights were trained. Upstream loads it with ``strict=False`` after copying the MimicMotion UNet's
  parts; here every key must be in the file, so nothing silently keeps the UNet's (or random) values.

Modules are built on the meta device and the checkpoint tensors assigned (``torch.load(mmap=True)``), so
a 3 GB file is paged in on use, never copied twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import UNetSpatioTemporalConditionModel

from controlnets import GuidanceFusion, MotionControlNet, PoseGuider, convert_champ_state_dict
from pipelines.pipeline_animation import AnimationPipeline

MIMICMOTION_PREFIXES = {"unet.": "unet", "pose_net.": "pose_guider"}


class CheckpointError(ValueError):
    """A checkpoint does not fit the module it is loaded into; the message lists the offending keys.

    ``code`` is stable: ``checkpoint_unreadable`` (not a loadable file), ``not_a_state_dict``,
    ``checkpoint_mismatch`` (keys or shapes differ), ``wrong_checkpoint`` (another model's file).
    """

    def __init__(self, message: str, code: str = "checkpoint_mismatch") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class KeyReport:
    """How a state dict fits a module: every list empty means a strict load will succeed."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 5) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:limit])})")
        if self.mismatched:
            shown = ", ".join(f"{k}: file {f} vs model {m}" for k, f, m in self.mismatched[:limit])
            parts.append(f"{len(self.mismatched)} with another shape ({shown})")
        return "; ".join(parts) or "all keys match"


def compare_keys(module: torch.nn.Module, shapes: Mapping[str, Any]) -> KeyReport:
    """Compare ``{key: tensor or shape}`` with ``module.state_dict()`` (works on the meta device)."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in shapes.items()}
    return KeyReport(
        missing=[k for k in expected if k not in found],
        unexpected=[k for k in found if k not in expected],
        mismatched=[(k, found[k], expected[k]) for k in expected if k in found and found[k] != expected[k]],
    )


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.pth``/``.pt``/``.safetensors`` state dict, memory-mapped where the format allows it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist", "checkpoint_unreadable")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # legacy (pre-zip) pickles cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download, another format, a pickle with code in it
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint: {exc}", "checkpoint_unreadable"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict", "not_a_state_dict")
    return state


def split_mimicmotion(state_dict: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"unet": {...}, "pose_guider": {...}}`` with prefixes stripped; unknown prefixes are an error."""
    parts: dict[str, dict[str, Any]] = {name: {} for name in MIMICMOTION_PREFIXES.values()}
    stray = []
    for key, value in state_dict.items():
        for prefix, name in MIMICMOTION_PREFIXES.items():
            if key.startswith(prefix):
                parts[name][key[len(prefix) :]] = value
                break
        else:
            stray.append(key)
    if stray:
        raise CheckpointError(
            f"{len(stray)} keys outside unet.* / pose_net.* (e.g. {', '.join(stray[:5])}); not a MimicMotion checkpoint",
            "wrong_checkpoint",
        )
    return parts


def pose_guider_config_from_shapes(shapes: Mapping[str, Any]) -> dict[str, Any]:
    """A ``PoseGuider`` config read off ``pose_net.*`` / guider key shapes (prefix optional): layer ``0`` is
    ``c -> c``, then per stage a stride-2 conv and a 3x3 conv, a last 3x3 conv, ``final_proj``."""
    shapes = {k.removeprefix("pose_net."): tuple(getattr(v, "shape", v)) for k, v in shapes.items()}
    convs = sorted(
        int(k.split(".")[1]) for k in shapes if k.startswith("conv_layers.") and k.endswith(".weight")
    )
    if not convs or "final_proj.weight" not in shapes or len(convs) % 2:
        raise CheckpointError("no pose guider layout (conv_layers.*, final_proj) in the checkpoint")
    widths = [shapes[f"conv_layers.{i}.weight"][0] for i in convs[1:-1:2]] + [
        shapes[f"conv_layers.{convs[-1]}.weight"][0]
    ]
    return {
        "conditioning_channels": shapes[f"conv_layers.{convs[0]}.weight"][1],
        "block_out_channels": tuple(widths),
        "out_channels": shapes["final_proj.weight"][0],
    }


def check_mimicmotion(
    shapes: Mapping[str, Any],
    unet_config: Mapping[str, Any],
    pose_guider_config: Mapping[str, Any] | None = None,
) -> dict[str, KeyReport]:
    """Key/shape report of a MimicMotion state dict (tensors or shapes) against modules built on meta."""
    parts = split_mimicmotion(shapes)
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel.from_config(dict(unet_config))
        guider = PoseGuider(**(pose_guider_config or pose_guider_config_from_shapes(parts["pose_guider"])))
    guider_report = compare_keys(guider, parts["pose_guider"])
    if guider.config.out_channels != unet.config.block_out_channels[0]:
        widths = ((guider.config.out_channels,), (unet.config.block_out_channels[0],))
        guider_report.mismatched.append(("final_proj out channels vs the UNet's conv_in", *widths))
    return {"unet": compare_keys(unet, parts["unet"]), "pose_guider": guider_report}


def _assign(
    module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None, what: str
):
    report = compare_keys(module, state_dict)
    if not report.ok:
        raise CheckpointError(f"{what} does not fit: {report.describe()}", "checkpoint_mismatch")
    # own copies in the target dtype: the file's tensors are views of one mmap'd storage
    owned = {k: v.to(dtype=dtype or v.dtype, copy=True) for k, v in state_dict.items()}
    module.load_state_dict(owned, strict=True, assign=True)
    return module


def load_mimicmotion(
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    unet_config: Mapping[str, Any],
    pose_guider_config: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[UNetSpatioTemporalConditionModel, PoseGuider]:
    """Build the UNet and the pose guider on the meta device and assign MimicMotion's weights, strictly.

    ``unet_config`` is the SVD-xt UNet config (``weights/<svd>/unet/config.json``); the guider's config is
    read off the file's shapes unless given (MimicMotion's is ``PoseGuider()``'s default); ``dtype`` casts
    the weights (the file is fp16); the modules come back in eval mode.
    """
    state_dict = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    parts = split_mimicmotion(state_dict)
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel.from_config(dict(unet_config))
        guider = PoseGuider(**(pose_guider_config or pose_guider_config_from_shapes(parts["pose_guider"])))
    _assign(unet, parts["unet"], dtype, "MimicMotion unet.*")
    _assign(guider, parts["pose_guider"], dtype, "MimicMotion pose_net.*")
    return unet.eval(), guider.eval()


def load_champ_guidance_encoders(
    files: Mapping[str, str | Path | Mapping[str, torch.Tensor]], fusion: GuidanceFusion | None = None
) -> tuple[GuidanceFusion, dict[str, tuple[str, ...]]]:
    """Champ encoders (``{guidance type: file or state dict}``) into one ``GuidanceFusion`` (sum, as Champ).

    Every key Champ's forward uses must be present; the unused ones it also stores are returned per type.
    """
    fusion = fusion or GuidanceFusion(guidance_types=tuple(files))
    ignored: dict[str, tuple[str, ...]] = {}
    for name, source in files.items():
        if name not in fusion.encoders:
            raise CheckpointError(f"no encoder for guidance type {name!r} in {fusion.guidance_types}")
        state_dict = source if isinstance(source, Mapping) else read_checkpoint(source)
        conversion = convert_champ_state_dict(state_dict, fusion.encoders[name])
        if conversion.missing:
            raise CheckpointError(
                f"Champ {name} encoder lacks {len(conversion.missing)} keys: {conversion.missing[:5]}"
            )
        fusion.encoders[name].load_state_dict(conversion.state_dict, strict=True)
        ignored[name] = conversion.ignored
    return fusion.eval(), ignored


def dispose_config(unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``MotionControlNet`` config of ``DisPose.pth`` for a UNet config (SVD-xt's: the default config)."""
    return MotionControlNet.config_from_unet(unet_config, residual_mode="dispose")


def check_dispose(shapes: Mapping[str, Any], unet_config: Mapping[str, Any]) -> KeyReport:
    """Key/shape report of a DisPose ControlNet state dict (tensors or shapes) against ours, built on meta.

    A file with MimicMotion's ``unet.``/``pose_net.`` prefixes is named as the wrong checkpoint."""
    if shapes and all(k.startswith(tuple(MIMICMOTION_PREFIXES)) for k in shapes):
        raise CheckpointError(
            "this is a MimicMotion checkpoint, not DisPose's ControlNet", "wrong_checkpoint"
        )
    with torch.device("meta"):
        controlnet = MotionControlNet(**dispose_config(unet_config))
    return compare_keys(controlnet, shapes)


def load_dispose(
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    unet_config: Mapping[str, Any],
    controlnet_config: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> MotionControlNet:
    """Build DisPose's ControlNet on the meta device and assign ``DisPose.pth``'s weights, strictly.

    ``unet_config``: the SVD-xt UNet config the ControlNet mirrors; ``controlnet_config`` replaces the
    derived config (tests use tiny ones); ``dtype`` casts the weights (the file is fp32). Returns the
    ControlNet in eval mode with ``residual_mode="dispose"`` unless the given config says otherwise.
    """
    state_dict = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    if state_dict and all(k.startswith(tuple(MIMICMOTION_PREFIXES)) for k in state_dict):
        raise CheckpointError(
            "this is a MimicMotion checkpoint, not DisPose's ControlNet", "wrong_checkpoint"
        )
    config = dict(controlnet_config) if controlnet_config is not None else dispose_config(unet_config)
    with torch.device("meta"):
        controlnet = MotionControlNet(**config)
    _assign(controlnet, state_dict, dtype, "DisPose ControlNet")
    return controlnet.eval()


def unet_config_from_dir(svd_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(svd_dir) / "unet" / "config.json").read_text())


def _variant(component_dir: Path, dtype: torch.dtype | None) -> str | None:
    """``"fp16"`` when loading in half precision and the directory ships ``*.fp16.safetensors`` (SVD does)."""
    if dtype != torch.float16:
        return None
    return "fp16" if any(component_dir.glob("*.fp16.safetensors")) else None


def build_pipeline(
    svd_dir: str | Path,
    mimicmotion: str | Path | Mapping[str, torch.Tensor] | None = None,
    champ_files: Mapping[str, str | Path | Mapping[str, torch.Tensor]] | None = None,
    dtype: torch.dtype | None = torch.float16,
    dispose: str | Path | Mapping[str, torch.Tensor] | None = None,
) -> AnimationPipeline:
    """An ``AnimationPipeline`` from an SVD-xt diffusers directory, MimicMotion's UNet + pose guider (else
    SVD's UNet and no guider), Champ's encoders and DisPose's ControlNet when given. ``save_pretrained`` it
    for fast later loads."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    svd_dir = Path(svd_dir)
    if not (svd_dir / "model_index.json").is_file():
        raise CheckpointError(
            f"{svd_dir} is not a diffusers pipeline directory (no model_index.json)", "checkpoint_unreadable"
        )
    vae = AutoencoderKLTemporalDecoder.from_pretrained(
        svd_dir, subfolder="vae", torch_dtype=dtype, variant=_variant(svd_dir / "vae", dtype)
    )
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(
        svd_dir, subfolder="image_encoder", dtype=dtype, variant=_variant(svd_dir / "image_encoder", dtype)
    )
    feature_extractor = CLIPImageProcessor.from_pretrained(svd_dir, subfolder="feature_extractor")
    scheduler = EulerDiscreteScheduler.from_pretrained(svd_dir, subfolder="scheduler")
    pose_guider = None
    if mimicmotion is not None:
        unet, pose_guider = load_mimicmotion(mimicmotion, unet_config_from_dir(svd_dir), dtype=dtype)
    else:
        unet = UNetSpatioTemporalConditionModel.from_pretrained(
            svd_dir, subfolder="unet", torch_dtype=dtype, variant=_variant(svd_dir / "unet", dtype)
        )
    motion_controlnet = None
    if dispose is not None:
        motion_controlnet = load_dispose(dispose, unet_config_from_dir(svd_dir), dtype=dtype)
    guidance_encoders = None
    if champ_files:
        guidance_encoders, _ = load_champ_guidance_encoders(champ_files)
        if dtype not in (None, torch.float32):
            guidance_encoders.to(dtype=dtype)
    return AnimationPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=feature_extractor,
        pose_guider=pose_guider,
        guidance_encoders=guidance_encoders,
        motion_controlnet=motion_controlnet,
    )
