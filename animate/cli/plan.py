"""``animate plan``: what ``animate run`` would run with (memory level, dtype, offload, ...) and what it costs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from animate.animator import AnimationOptions
from animate.cli.media import parse_size
from animate.errors import AnimateError
from animate.settings import Settings


def parse_gpus(gpus: str | None, processes: int | None = None) -> list[str]:
    """``"0,1"`` -> ``["0", "1"]``; ``"cpu,cpu"`` or ``processes=2`` -> CPU processes (gloo); ``[]``: one
    process as usual."""
    if gpus is not None and processes is not None:
        raise AnimateError("invalid_option", "--gpus and --processes go alone, not together")
    if processes is not None:
        if processes < 1:
            raise AnimateError("invalid_option", f"--processes must be >= 1, got {processes}")
        return ["cpu"] * processes if processes > 1 else []
    devices = [d.strip() for d in (gpus or "").split(",") if d.strip()]
    for device in devices:
        if device != "cpu" and not device.isdigit():
            raise AnimateError("invalid_option", f"--gpus takes GPU indices or cpu, e.g. 0,1; got {device!r}")
    if len(set(devices) - {"cpu"}) != len([d for d in devices if d != "cpu"]):
        raise AnimateError("invalid_option", f"--gpus names a GPU twice: {gpus}")
    if devices and "cpu" in devices and len(set(devices)) > 1:
        raise AnimateError("invalid_option", "--gpus mixes GPUs and cpu")
    return devices if len(devices) > 1 else []


def gpu_memory_option(text: str | None) -> int | None:
    from animate.engines.plan import parse_bytes

    if text is None:
        return None
    try:
        value = parse_bytes(text)
    except ValueError as exc:
        raise AnimateError("invalid_option", str(exc)) from exc
    if value < 2**30:
        raise AnimateError("invalid_option", f"--gpu-memory must be at least 1GiB, got {text}")
    return value


def plan(
    reference: Path = typer.Argument(..., help="Reference image of the person."),
    driving: Path = typer.Argument(..., help="Driving video with the motion."),
    gpu_memory: str | None = typer.Option(
        None,
        "--gpu-memory",
        help="Plan for a card with this much free memory, e.g. 24GiB (default: detected).",
    ),
    gpus: str | None = typer.Option(
        None, help="GPUs the job is spread over, e.g. 0,1 (tiles split per step)."
    ),
    engine: str = typer.Option("auto", help="auto | warp | diffusion."),
    size: str | None = typer.Option(None, help="WIDTHxHEIGHT (default: the reference's aspect in 576x1024)."),
    steps: int = typer.Option(25, min=1, max=200, help="Denoising steps."),
    frames: int | None = typer.Option(None, min=1, help="Plan for this many frames (default: the video's)."),
    max_frames: int | None = typer.Option(None, "--max-frames", min=1, help="Only the first N frames."),
    tile_size: int | None = typer.Option(None, "--tile-size", help="Frames per UNet call."),
    tile_overlap: int | None = typer.Option(
        None, "--tile-overlap", help="Frames shared by neighbouring tiles."
    ),
    preset: str | None = typer.Option(None, help="mimicmotion | dispose (as `animate run --preset`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Print the memory / time plan of animating REFERENCE with DRIVING, without running anything heavy."""
    from animate.engines.plan import format_table, plan_job

    options = AnimationOptions(
        engine=engine,
        size=parse_size(size),
        max_frames=max_frames,
        steps=steps,
        preset=preset,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
    )
    options.validate()
    devices = parse_gpus(gpus)
    result = plan_job(
        Settings(),
        reference,
        driving,
        options,
        gpu_memory=gpu_memory_option(gpu_memory),
        gpus=max(1, len(devices)),
        frames=frames,
    )
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_table(result))
