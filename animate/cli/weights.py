"""``animate weights check`` and ``animate weights convert``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from animate.settings import Settings
from animate.weights import DTYPES, convert_weights, inspect_weights

app = typer.Typer(
    help="Inspect and convert the model weights under the weights directory.", no_args_is_help=True
)

_DIR = typer.Option(None, "--dir", help="Weights directory (default: ANIMATE_WEIGHTS_DIR or ./weights).")


def _root(directory: Path | None) -> Path:
    return directory if directory is not None else Settings().weights_dir


#: What each feature of ``inspect_weights`` lets the engines do, in user words.
FEATURE_WORDS = {
    "diffusion": "diffusion engine (SVD-xt + MimicMotion, or a converted pipeline)",
    "pose_guider": "pose guidance from the skeleton (MimicMotion's pose guider)",
    "fast_load": "fast start from one converted pipeline folder",
    "guidance_depth": "depth guidance from the 3D body (Champ)",
    "guidance_normal": "surface-normal guidance from the 3D body (Champ)",
    "guidance_semantic": "body-part guidance from the 3D body (Champ)",
    "guidance_skeleton": "skeleton guidance drawn from the 3D body (Champ)",
    "dwpose": "DWPose keypoints instead of MediaPipe's",
    "dispose": "motion guidance from keypoint trajectories (DisPose)",
    "cmp": "dense motion from CMP (else from the 3D body)",
    "dift": "reference point features from Stable Diffusion 1.5 (DisPose)",
    "trained_pose_guider": "trained pose guider",
    "trained_guidance_encoders": "trained guidance encoders",
    "trained_motion_controlnet": "trained motion ControlNet",
    "trained_unet": "trained UNet (whole)",
    "trained_unet_temporal": "trained UNet temporal layers",
    "trained_lora": "trained LoRA on the UNet's attention",
    "trained_identity_adapter": "trained identity adapter (face tokens)",
    "adapter": "a complete training output (animate run --adapter)",
    "identity_adapter": "identity adapter: the reference's face tokens in the UNet (diffusion)",
    "face_arcface": "identity embeddings from an ArcFace ONNX model (else dlib's ResNet, embedded)",
}


def embedder_words(name: str) -> str:
    """``animate.face.embed.embedder_name`` in user words: ``dlib_resnet_v1`` -> dlib's face ResNet."""
    if name.startswith("arcface_onnx:"):
        return f"ArcFace ONNX model {name.split(':', 1)[1]} (from the weights)"
    if name.startswith("dlib"):
        return "dlib's face ResNet (installed with the package)"
    return name


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB" if size else "-"


@app.command("check")
def check(
    directory: Path | None = _DIR, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """Report which weight files are present and valid, and which engine features they enable (a training
    run folder: its trained parts, for `animate run --adapter`)."""
    from animate.weights import find_adapter, inspect_adapter

    adapter = find_adapter(_root(directory))
    report = inspect_adapter(adapter) if adapter is not None else inspect_weights(_root(directory))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    typer.echo(f"{'trained parts' if adapter is not None else 'weights directory'}: {report.root}")
    for file in report.files:
        typer.echo(f"  {file.status:<8} {file.path:<48} {_mib(file.bytes):>14}  {file.detail}")
    typer.echo("features:")
    for name, enabled in report.features.items():
        typer.echo(f"  {'yes' if enabled else 'no ':<4} {FEATURE_WORDS.get(name, name.replace('_', ' '))}")
    if report.face_embedder:
        typer.echo(f"face embedder: {embedder_words(report.face_embedder)}")
    if adapter is not None:
        usable = "use them with" if report.features.get("adapter") else "broken: retrain or restore"
        typer.echo(f"{usable}: animate run ... --engine diffusion --adapter {report.root}")
        return
    if not report.features.get("diffusion"):
        typer.echo(
            "no diffusion weights: `animate run` uses the CPU warp engine; weights/README.md says where to get them"
        )


@app.command("convert")
def convert(
    directory: Path | None = _DIR,
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (default: <dir>/animation-pipeline)."
    ),
    dtype: str = typer.Option("fp16", "--dtype", help=f"One of {', '.join(DTYPES)}."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty output directory."),
) -> None:
    """Write one save_pretrained pipeline directory (safetensors) from SVD-xt + MimicMotion (+ Champ)."""
    path = convert_weights(_root(directory), out=out, dtype=dtype, force=force)
    typer.echo(f"wrote {path}")
