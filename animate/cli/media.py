"""``animate media``: look at and convert media files with the same code the service uses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from animate.cli.progress import StageProgress
from animate.errors import AnimateError
from animate.media import open_video, write_video
from animate.settings import Settings

app = typer.Typer(help="Probe and transcode media files.", no_args_is_help=True)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"576x1024"`` -> ``(576, 1024)``."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 2:
        raise AnimateError(
            "invalid_option", f"size must look like WIDTHxHEIGHT (e.g. 576x1024), got {text!r}"
        )
    return int(match[1]), int(match[2])


@app.command("probe")
def probe(
    file: Path = typer.Argument(..., help="A local video file."),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON."),
) -> None:
    """Validate a video and print its facts (container, codec, size, rotation, fps, duration, frames, audio)."""
    info = open_video(file, Settings().media).info
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    for key, value in info.to_dict().items():
        typer.echo(f"{key:>13}: {value:.3f}" if isinstance(value, float) else f"{key:>13}: {value}")


@app.command("transcode")
def transcode(
    source: Path = typer.Argument(..., help="Input video."),
    output: Path = typer.Argument(..., help="Output mp4 (H.264, yuv420p, faststart)."),
    fps: float | None = typer.Option(None, help="Output frame rate (default: the input's average rate)."),
    size: str | None = typer.Option(None, help="WIDTHxHEIGHT; scaled to cover and centre-cropped."),
    max_frames: int | None = typer.Option(None, "--max-frames", min=1, help="Stop after this many frames."),
    crf: int | None = typer.Option(None, min=0, max=51, help="H.264 quality (lower is better)."),
    audio: bool = typer.Option(True, help="Keep the input's audio, trimmed to the output length."),
) -> None:
    """Decode, resample, scale and re-encode a video exactly as the renderer's output path does."""
    settings = Settings()
    target_size = parse_size(size)
    video = open_video(source, settings.media)
    total = video.output_frame_count(fps, max_frames)
    progress = StageProgress()  # on stderr: one line when done (redrawn in place in a terminal)

    def frames():
        progress("transcode", 0, total)
        for i, frame in enumerate(video.frames(fps=fps, max_frames=max_frames, size=target_size)):
            yield frame
            progress("transcode", i + 1, total)

    written = write_video(
        output,
        frames(),
        fps or video.info.fps,
        crf=settings.output_crf if crf is None else crf,
        preset=settings.output_preset,
        audio_from=source if audio and video.info.has_audio else None,
    )
    progress.close()
    typer.echo(
        f"wrote {written.path} ({written.width}x{written.height}, {written.frame_count} frames, {written.fps:g} fps)"
    )
