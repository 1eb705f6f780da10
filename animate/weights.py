"""What is in the weights directory, which engine features it enables, and converting it for fast loads.

Inspection reads safetensors headers and memory-mapped pickles for key names and shapes only; no
multi-gigabyte file is read into RAM. The layout under ``weights/`` is described in ``weights/README.md``.

Layering note: the checks and the conversion need ``pipelines`` (key layouts, the pipeline builder); it is
imported inside the functions that need it, so importing this module stays light.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from animate.errors import AnimateError

SVD_DIR = "stable-video-diffusion-img2vid-xt-1-1"
MIMICMOTION_FILE = "MimicMotion_1-1.pth"
CHAMP_DIR = "champ"
CHAMP_FILES = {
    "depth": "guidance_encoder_depth.pth",
    "normal": "guidance_encoder_normal.pth",
    "semantic": "guidance_encoder_semantic_map.pth",
    "skeleton": "guidance_encoder_dwpose.pth",
}
CONVERTED_DIR = "animation-pipeline"
DWPOSE_FILES = ("dwpose/yolox_l.onnx", "dwpose/dw-ll_ucoco_384.onnx")
DISPOSE_FILE = "DisPose.pth"
CMP_FILE = "cmp/ckpt_iter_42000.pth.tar"
SD15_DIR = "stable-diffusion-v1-5"  # DIFT reference features for DisPose's point adapter
SD15_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DTYPES = ("fp16", "bf16", "fp32")

OK, MISSING, INVALID, PRESENT = "ok", "missing", "invalid", "present"


class WeightsError(AnimateError):
    code = "weights_invalid"


@dataclass(frozen=True)
class WeightFile:
    """One expected file or directory: ``ok`` (checked), ``present`` (found, not checked here),
    ``missing`` or ``invalid`` (``detail`` says why)."""

    name: str
    path: str
    status: str
    bytes: int = 0
    detail: str = ""


@dataclass(frozen=True)
class WeightsReport:
    root: str
    files: tuple[WeightFile, ...]
    features: dict[str, bool] = field(default_factory=dict)
    face_embedder: str = (
        ""  # animate.face: the identity embedder in use (dlib_resnet_v1 or arcface_onnx:FILE)
    )

    def status(self, name: str) -> str:
        return next((f.status for f in self.files if f.name == name), MISSING)

    def to_dict(self) -> dict[str, Any]:
        out = {"root": self.root, "files": [asdict(f) for f in self.files], "features": dict(self.features)}
        if self.face_embedder:
            out["face_embedder"] = self.face_embedder
        return out


def safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """``{key: {"dtype", "shape", "data_offsets"}}`` from a safetensors file's JSON header (first bytes only)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path.name}: implausible safetensors header of {length} bytes")
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _weight_file(component_dir: Path) -> Path | None:
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        for candidate in (
            component_dir / name,
            component_dir / name.replace(".safetensors", ".fp16.safetensors"),
        ):
            if candidate.is_file():
                return candidate
    return None


def _check_svd(root: Path) -> tuple[WeightFile, dict[str, Any] | None]:
    path = root / SVD_DIR
    if not (path / "model_index.json").is_file():
        return WeightFile("svd", SVD_DIR, MISSING, detail="SVD-xt 1.1 in diffusers format"), None
    # imported only when there is something to check: a missing file costs no diffusers import
    from diffusers import UNetSpatioTemporalConditionModel

    from pipelines import KeyReport
    from pipelines.checkpoints import compare_keys, unet_config_from_dir

    problems = []
    for component in ("unet", "vae", "image_encoder"):
        weights = _weight_file(path / component)
        if weights is None:
            problems.append(f"{component}: no safetensors weights")
            continue
        try:
            header = safetensors_header(weights)
        except (ValueError, OSError, struct.error) as exc:
            problems.append(f"{component}: unreadable ({exc})")
            continue
        if component == "unet":
            import torch

            config = unet_config_from_dir(path)
            with torch.device("meta"):
                unet = UNetSpatioTemporalConditionModel.from_config(config)
            report: KeyReport = compare_keys(unet, {k: v["shape"] for k, v in header.items()})
            if not report.ok:
                problems.append(f"unet: {report.describe()}")
    if problems:
        return WeightFile("svd", SVD_DIR, INVALID, _size(path), "; ".join(problems)), None
    return WeightFile("svd", SVD_DIR, OK, _size(path), "unet, vae, image_encoder"), unet_config_from_dir(path)


def _pth_shapes(path: Path) -> dict[str, tuple[int, ...]] | str:
    """Key names and shapes of a pickled state dict, or why it cannot be read. Memory-mapped: the tensors
    stay on disk, only names and shapes are touched."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:
        return f"unreadable: {exc}"
    if not isinstance(state, dict):
        return "not a state dict"
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def _check_mimicmotion(root: Path, unet_config: dict[str, Any] | None) -> WeightFile:
    path = root / MIMICMOTION_FILE
    if not path.is_file():
        return WeightFile("mimicmotion", MIMICMOTION_FILE, MISSING, detail="UNet + pose guider")
    from pipelines import CheckpointError, check_mimicmotion

    shapes = _pth_shapes(path)
    if isinstance(shapes, str):
        return WeightFile("mimicmotion", MIMICMOTION_FILE, INVALID, _size(path), shapes)
    try:
        reports = check_mimicmotion(shapes, unet_config or _svd_xt_unet_config())
    except CheckpointError as exc:
        return WeightFile("mimicmotion", MIMICMOTION_FILE, INVALID, _size(path), str(exc))
    bad = [f"{name}: {r.describe()}" for name, r in reports.items() if not r.ok]
    if bad:
        return WeightFile("mimicmotion", MIMICMOTION_FILE, INVALID, _size(path), "; ".join(bad))
    return WeightFile("mimicmotion", MIMICMOTION_FILE, OK, _size(path), f"{len(shapes)} keys")


def _svd_xt_unet_config() -> dict[str, Any]:
    """SVD-xt's UNet config: diffusers' defaults with ``sample_size`` 96 (per the research manifest)."""
    import inspect

    from diffusers import UNetSpatioTemporalConditionModel

    signature = inspect.signature(UNetSpatioTemporalConditionModel.__init__)
    config = {
        k: p.default for k, p in signature.parameters.items() if p.default is not inspect.Parameter.empty
    }
    return config | {"sample_size": 96}


def _check_champ(root: Path) -> list[WeightFile]:
    files = []
    for name, filename in CHAMP_FILES.items():
        relative = f"{CHAMP_DIR}/{filename}"
        path = root / relative
        if not path.is_file():
            files.append(WeightFile(f"champ_{name}", relative, MISSING, detail="Champ guidance encoder"))
            continue
        import torch

        from controlnets import GuidanceEncoder, convert_champ_state_dict
        from pipelines import read_checkpoint

        try:
            state = read_checkpoint(path)
        except Exception as exc:
            files.append(WeightFile(f"champ_{name}", relative, INVALID, _size(path), f"unreadable: {exc}"))
            continue
        with torch.device("meta"):
            encoder = GuidanceEncoder()
        conversion = convert_champ_state_dict(state, encoder)
        if conversion.missing:
            detail = f"lacks {len(conversion.missing)} keys its forward uses (e.g. {conversion.missing[0]})"
            files.append(WeightFile(f"champ_{name}", relative, INVALID, _size(path), detail))
        else:
            detail = f"{len(conversion.state_dict)} keys used, {len(conversion.ignored)} unused ignored"
            files.append(WeightFile(f"champ_{name}", relative, OK, _size(path), detail))
    return files


def _check_dispose(root: Path, unet_config: dict[str, Any] | None) -> WeightFile:
    path = root / DISPOSE_FILE
    if not path.is_file():
        return WeightFile("dispose", DISPOSE_FILE, MISSING, detail="DisPose motion ControlNet")
    from pipelines import CheckpointError, check_dispose

    shapes = _pth_shapes(path)
    if isinstance(shapes, str):
        return WeightFile("dispose", DISPOSE_FILE, INVALID, _size(path), shapes)
    try:
        report = check_dispose(shapes, unet_config or _svd_xt_unet_config())
    except CheckpointError as exc:
        return WeightFile("dispose", DISPOSE_FILE, INVALID, _size(path), str(exc))
    if not report.ok:
        return WeightFile("dispose", DISPOSE_FILE, INVALID, _size(path), report.describe())
    return WeightFile("dispose", DISPOSE_FILE, OK, _size(path), f"{len(shapes)} keys")


# The CMP checkpoint is an old-format pickle that cannot be memory-mapped: checking it reads the whole
# file. The verdict is remembered per (path, size, mtime), so a job's engine check does not pay it again.
_CMP_CHECKED: dict[tuple[str, int, int], WeightFile] = {}


def _check_cmp(root: Path) -> WeightFile:
    path = root / CMP_FILE
    if not path.is_file():
        return WeightFile("cmp", CMP_FILE, MISSING, detail="CMP dense flow (else from the body model)")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CMP_CHECKED:
        _CMP_CHECKED[key] = _load_cmp_for_check(path)
    return _CMP_CHECKED[key]


def _load_cmp_for_check(path: Path) -> WeightFile:
    from controlnets.cmp import CMPCheckpointError, CMPFlow

    try:
        model = CMPFlow.from_checkpoint(path)
    except CMPCheckpointError as exc:
        return WeightFile("cmp", CMP_FILE, INVALID, _size(path), str(exc))
    keys = len(model.state_dict())
    del model
    return WeightFile("cmp", CMP_FILE, OK, _size(path), f"{keys} keys")


def _check_sd15(root: Path) -> WeightFile:
    """Stable Diffusion 1.5 in diffusers layout; the UNet's keys are checked against its config."""
    path = root / SD15_DIR
    if not path.is_dir():
        return WeightFile("sd15", SD15_DIR, MISSING, detail="SD 1.5 for DIFT point features")
    problems = [f"no {part}/" for part in SD15_PARTS if not (path / part).is_dir()]
    for part in ("unet", "vae", "text_encoder"):
        if (path / part).is_dir() and _weight_file(path / part) is None:
            problems.append(f"{part}: no safetensors weights")
    if not problems:
        import torch
        from diffusers import UNet2DConditionModel

        from pipelines.checkpoints import compare_keys

        try:
            config = json.loads((path / "unet" / "config.json").read_text())
            header = safetensors_header(_weight_file(path / "unet"))
            with torch.device("meta"):
                unet = UNet2DConditionModel.from_config(config)
            report = compare_keys(unet, {k: v["shape"] for k, v in header.items()})
            if not report.ok:
                problems.append(f"unet: {report.describe()}")
        except (OSError, ValueError, struct.error) as exc:
            problems.append(f"unet: unreadable ({exc})")
    if problems:
        return WeightFile("sd15", SD15_DIR, INVALID, _size(path), "; ".join(problems))
    return WeightFile("sd15", SD15_DIR, OK, _size(path), "unet, vae, text_encoder")


def _check_converted(root: Path) -> WeightFile:
    path = root / CONVERTED_DIR
    index = path / "model_index.json"
    if not index.is_file():
        return WeightFile("converted", CONVERTED_DIR, MISSING, detail="`animate weights convert` writes it")
    try:
        model_index = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        return WeightFile("converted", CONVERTED_DIR, INVALID, _size(path), f"model_index.json: {exc}")
    if model_index.get("_class_name") != "AnimationPipeline":
        return WeightFile(
            "converted", CONVERTED_DIR, INVALID, _size(path), "not an AnimationPipeline directory"
        )
    parts = [
        k
        for k in ("pose_guider", "guidance_encoders", "motion_controlnet")
        if (model_index.get(k) or [None])[0]
    ]
    missing = [c for c in ("unet", "vae", "image_encoder") if _weight_file(path / c) is None]
    if missing:
        return WeightFile(
            "converted", CONVERTED_DIR, INVALID, _size(path), f"no weights for {', '.join(missing)}"
        )
    return WeightFile(
        "converted", CONVERTED_DIR, OK, _size(path), "with " + (", ".join(parts) or "backbone only")
    )


WAN_DIR = "Wan2.2-Animate-14B-Diffusers"
# Diffusers-format parts of Wan2.2-Animate-14B: folder -> (files that must all be there, weight stems or None)
WAN_PARTS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "tokenizer": (("tokenizer_config.json",), None),
    "text_encoder": (("config.json",), "model"),
    "image_encoder": (("config.json",), "model"),
    "image_processor": (("preprocessor_config.json",), None),
    "scheduler": (("scheduler_config.json",), None),
    "vae": (("config.json",), "diffusion_pytorch_model"),
    "transformer": (("config.json",), "diffusion_pytorch_model"),
}


def _wan_weights_problem(folder: Path, stem: str) -> str | None:
    """None when ``folder`` holds ``stem``.safetensors, or a shard index whose every shard is there."""
    if (folder / f"{stem}.safetensors").is_file():
        return None
    index = folder / f"{stem}.safetensors.index.json"
    if not index.is_file():
        return f"no {stem}.safetensors"
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError) as exc:
        return f"{index.name} unreadable ({exc})"
    absent = [s for s in shards if not (folder / s).is_file()]
    return f"{len(absent)} of {len(shards)} shards missing ({absent[0]}...)" if absent else None


def check_wan(root: Path) -> WeightFile:
    """The Diffusers-format Wan2.2-Animate-14B folder: ``ok`` when every part is there (``detail`` names
    the missing or broken parts otherwise)."""
    path = Path(root) / WAN_DIR
    if not path.is_dir():
        return WeightFile("wan", WAN_DIR, MISSING, detail="Wan2.2-Animate-14B in diffusers format (82 GB)")
    problems = []
    index = path / "model_index.json"
    if not index.is_file():
        problems.append("model_index.json missing")
    else:
        try:
            name = json.loads(index.read_text()).get("_class_name")
        except json.JSONDecodeError as exc:
            name = f"unreadable ({exc})"
        if name != "WanAnimatePipeline":
            problems.append(f"model_index.json is for {name}, not WanAnimatePipeline")
    for part, (files, stem) in WAN_PARTS.items():
        folder = path / part
        if not folder.is_dir():
            problems.append(f"{part}/ missing")
            continue
        absent = [f for f in files if not (folder / f).is_file()]
        if part == "tokenizer" and not any(
            (folder / f).is_file() for f in ("tokenizer.json", "spiece.model")
        ):
            absent.append("tokenizer.json")
        if absent:
            problems.append(f"{part}/{', '.join(absent)} missing")
        elif stem is not None and (problem := _wan_weights_problem(folder, stem)) is not None:
            problems.append(f"{part}/: {problem}")
    if problems:
        return WeightFile("wan", WAN_DIR, INVALID, _size(path), "incomplete: " + "; ".join(problems))
    return WeightFile("wan", WAN_DIR, OK, _size(path), "all parts: " + ", ".join(WAN_PARTS))


IDENTITY_DIR = "identity_adapter"


def _check_face(root: Path) -> WeightFile:
    """An ArcFace ONNX model in ``face/`` (optional: dlib's ResNet, inside its wheel, is the default)."""
    from animate.face.embed import FACE_DIR, find_arcface

    path = find_arcface(root)
    if path is None:
        return WeightFile(
            "face_embedder",
            f"{FACE_DIR}/*.onnx",
            MISSING,
            detail="optional ArcFace ONNX; dlib's ResNet is used",
        )
    return WeightFile(
        "face_embedder", f"{FACE_DIR}/{path.name}", PRESENT, _size(path), "ArcFace ONNX: identity embeddings"
    )


def check_identity_adapter(folder: Path, relative: str = IDENTITY_DIR) -> WeightFile:
    """A saved ``controlnets.IdentityAdapter`` (config.json + safetensors): its class, embedding size and
    layer count, against the weights' key names."""
    if not folder.is_dir():
        return WeightFile(
            "identity_adapter",
            relative,
            MISSING,
            detail="identity adapter (optional; animate train run --train identity)",
        )
    try:
        config = json.loads((folder / "config.json").read_text())
        weights = folder / "diffusion_pytorch_model.safetensors"
        keys = set(safetensors_header(weights)) if weights.is_file() else set()
    except (OSError, ValueError) as exc:
        return WeightFile("identity_adapter", relative, INVALID, _size(folder), f"unreadable ({exc})")
    if config.get("_class_name") != "IdentityAdapter":
        return WeightFile(
            "identity_adapter", relative, INVALID, _size(folder), f"config is for {config.get('_class_name')}"
        )
    layers = config.get("attention_layers") or []
    expected = {"proj.weight", "norm.weight"} | {
        f"layers.{name.replace('.', '__')}.to_out.weight" for name, *_ in layers
    }
    absent = sorted(expected - keys)
    if not layers or absent:
        detail = f"missing keys: {', '.join(absent[:3])}" if absent else "no attention layers"
        return WeightFile("identity_adapter", relative, INVALID, _size(folder), detail)
    return WeightFile(
        "identity_adapter",
        relative,
        OK,
        _size(folder),
        f"{config.get('embedding_dim')}-d embeddings -> {config.get('num_tokens')} tokens, {len(layers)} layers",
    )


def _presence(name: str, relative: str, detail: str, root: Path) -> WeightFile:
    path = root / relative
    return WeightFile(name, relative, PRESENT if path.exists() else MISSING, _size(path), detail)


def inspect_weights(root: str | Path) -> WeightsReport:
    """Check every known file under ``root``; ``features`` says what the engines can use."""
    root = Path(root)
    svd, unet_config = _check_svd(root)
    mimicmotion = _check_mimicmotion(root, unet_config)
    champ = _check_champ(root)
    dispose = _check_dispose(root, unet_config)
    cmp = _check_cmp(root)
    sd15 = _check_sd15(root)
    converted = _check_converted(root)
    wan = check_wan(root)
    face = _check_face(root)
    identity = check_identity_adapter(root / IDENTITY_DIR)
    others = [
        _presence("dwpose_detector", DWPOSE_FILES[0], "DWPose person detector (optional)", root),
        _presence("dwpose_pose", DWPOSE_FILES[1], "DWPose whole-body keypoints (optional)", root),
    ]
    pose_guided = converted.status == OK and "pose_guider" in converted.detail
    diffusion = pose_guided or (svd.status == OK and mimicmotion.status == OK)
    converted_controlnet = converted.status == OK and "motion_controlnet" in converted.detail
    features = {
        "diffusion": diffusion,
        "pose_guider": pose_guided or mimicmotion.status == OK,
        "fast_load": converted.status == OK,
        **{f"guidance_{f.name.removeprefix('champ_')}": f.status == OK for f in champ},
        "dwpose": all((root / p).is_file() for p in DWPOSE_FILES),
        # DisPose's ControlNet in the diffusion engine; CMP gives its dense flow (else the body model) and
        # SD 1.5 its point adapter's reference features (else the point adapter is off)
        "dispose": diffusion and (converted_controlnet or dispose.status == OK),
        "cmp": cmp.status == OK,
        "dift": sd15.status == OK,
        "wan": wan.status == OK,
        "identity_adapter": diffusion and identity.status == OK,
        "face_arcface": face.status == PRESENT,
    }
    files = (svd, mimicmotion, *champ, dispose, cmp, sd15, converted, wan, face, identity, *others)
    from animate.face.embed import embedder_name

    return WeightsReport(root=str(root), files=files, features=features, face_embedder=embedder_name(root))


def find_adapter(path: str | Path) -> Path | None:
    """The trained-parts folder of ``animate train run`` at ``path``: the folder itself (``RUN_DIR/final``)
    or a run folder's ``final/``; None when neither holds an ``adapter.json``."""
    path = Path(path)
    for candidate in (path, path / "final"):
        if (candidate / "adapter.json").is_file():
            return candidate
    return None


def inspect_adapter(path: str | Path) -> WeightsReport:
    """Check the parts ``animate train run`` saved (``pipelines.adapters`` layout): each part's config and
    safetensors header (key count); ``features`` names the parts, usable with ``animate run --adapter``."""
    from pipelines.adapters import (
        LORA_DIR,
        LORA_WEIGHTS,
        MODULE_PARTS,
        TEMPORAL_DIR,
        TEMPORAL_WEIGHTS,
        read_adapter_info,
    )
    from pipelines.checkpoints import CheckpointError

    path = Path(path)
    try:
        info = read_adapter_info(path)
    except CheckpointError as exc:
        missing = WeightFile("adapter", "adapter.json", INVALID, detail=str(exc))
        return WeightsReport(root=str(path), files=(missing,), features={"adapter": False})
    detail = f"{', '.join(info.get('parts', []))}; {info.get('steps')} steps" + (
        " (EMA)" if info.get("ema") else ""
    )
    files = [WeightFile("adapter", "adapter.json", OK, _size(path / "adapter.json"), detail)]
    layout = {name: (name, "config.json", "diffusion_pytorch_model.safetensors") for name in MODULE_PARTS}
    layout["lora"] = (LORA_DIR, "adapter_config.json", LORA_WEIGHTS)
    layout["unet_temporal"] = (TEMPORAL_DIR, None, TEMPORAL_WEIGHTS)
    features = {}
    for name, (folder, config, weights) in layout.items():
        if not (path / folder).is_dir():
            continue
        try:
            if config is not None:
                json.loads((path / folder / config).read_text())
            keys = len(safetensors_header(path / folder / weights))
            files.append(WeightFile(name, folder, OK, _size(path / folder), f"{keys} tensors"))
            features[f"trained_{name}"] = True
        except (OSError, ValueError, struct.error) as exc:
            files.append(WeightFile(name, folder, INVALID, _size(path / folder), f"unreadable: {exc}"))
            features[f"trained_{name}"] = False
    features["adapter"] = all(f.status == OK for f in files)
    return WeightsReport(root=str(path), files=tuple(files), features=features)


def convert_weights(
    root: str | Path, out: str | Path | None = None, dtype: str = "fp16", force: bool = False
) -> Path:
    """SVD-xt + MimicMotion (+ Champ encoders and DisPose's ControlNet when present) -> one ``save_pretrained``
    directory (safetensors)."""
    import torch

    from pipelines import CheckpointError, build_pipeline

    root = Path(root)
    out = Path(out) if out is not None else root / CONVERTED_DIR
    if dtype not in DTYPES:
        raise WeightsError("invalid_dtype", f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if out.exists() and any(out.iterdir()) and not force:
        raise WeightsError("output_exists", f"{out} exists and is not empty (use --force to overwrite)")
    report = inspect_weights(root)
    if report.status("svd") != OK:
        svd = next(f for f in report.files if f.name == "svd")
        raise WeightsError(
            "weights_missing", f"need {root / SVD_DIR} in diffusers format: {svd.status} {svd.detail}"
        )
    for file in report.files:
        if file.status == INVALID and file.name in (
            "mimicmotion",
            "dispose",
            *(f"champ_{n}" for n in CHAMP_FILES),
        ):
            raise WeightsError("weights_invalid", f"{file.path}: {file.detail}")
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    champ = {n: root / CHAMP_DIR / f for n, f in CHAMP_FILES.items() if report.status(f"champ_{n}") == OK}
    mimicmotion = root / MIMICMOTION_FILE if report.status("mimicmotion") == OK else None
    dispose = root / DISPOSE_FILE if report.status("dispose") == OK else None
    try:
        pipe = build_pipeline(
            root / SVD_DIR,
            mimicmotion=mimicmotion,
            champ_files=champ or None,
            dtype=torch_dtype,
            dispose=dispose,
        )
    except CheckpointError as exc:
        raise WeightsError("weights_invalid", str(exc)) from exc
    pipe.save_pretrained(out, safe_serialization=True)
    return out
