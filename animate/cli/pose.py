"""``animate pose``: whole-body keypoints of an image or a video, as JSON and optionally as a skeleton video."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from animate.cli.progress import StageProgress
from animate.errors import AnimateError
from animate.media import load_image, open_video, write_video
from animate.pose import (
    MediaPipeEstimator,
    PoseEstimator,
    PoseSequence,
    draw_pose,
    estimate_sequence_from_image,
    estimate_video,
)
from animate.pose.dwpose import DWPoseEstimator
from animate.settings import Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


class EstimatorName(StrEnum):
    mediapipe = "mediapipe"
    dwpose = "dwpose"


def _estimator(name: EstimatorName, settings: Settings, static: bool) -> PoseEstimator:
    if name is EstimatorName.dwpose:
        return DWPoseEstimator.from_weights(settings.weights_dir)
    return MediaPipeEstimator(static=static, segmentation=static)


def _render(sequence: PoseSequence, path: Path, settings: Settings, progress: StageProgress):
    fps = sequence.fps if sequence.fps > 0 else 1.0

    def frames():
        progress("render", 0, len(sequence))
        for i, pose in enumerate(sequence):
            yield draw_pose(pose, sequence.width, sequence.height)
            progress("render", i + 1, len(sequence))

    written = write_video(path, frames(), fps, crf=settings.output_crf, preset=settings.output_preset)
    progress.close()
    return written


def pose(
    source: Path = typer.Argument(..., help="A reference image or a driving video."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write POSES.json."),
    render: Path | None = typer.Option(None, "--render", help="Also write the skeletons as an mp4."),
    estimator: EstimatorName = typer.Option(EstimatorName.mediapipe, "--estimator", help="Pose model."),
    max_frames: int | None = typer.Option(None, "--max-frames", min=1, help="Stop after this many frames."),
) -> None:
    """Estimate the main person's 133 whole-body keypoints (COCO-WholeBody) in every frame."""
    settings = Settings()
    progress = StageProgress()  # one line per stage on stderr (redrawn in place in a terminal)
    if not source.is_file():
        raise AnimateError("file_not_found", f"{source} does not exist")
    if source.suffix.lower() in IMAGE_SUFFIXES:
        image = load_image(source, settings.media)
        with _estimator(estimator, settings, static=True) as model:
            sequence = estimate_sequence_from_image(image, model)
    else:
        video = open_video(source, settings.media)
        total = video.output_frame_count(None, max_frames)
        with _estimator(estimator, settings, static=False) as model:
            progress("pose", 0, total)
            sequence = estimate_video(
                video,
                model,
                max_frames=max_frames,
                progress=lambda done, _total: progress("pose", done, total),
            )
        progress.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    sequence.save(output)
    found = int(sequence.detected.sum())
    typer.echo(
        f"wrote {output} ({len(sequence)} frames, person in {found}, {sequence.width}x{sequence.height})"
    )
    if render is not None:
        w = _render(sequence, render, settings, progress)
        typer.echo(f"wrote {w.path} ({w.width}x{w.height}, {w.frame_count} frames, {w.fps:g} fps)")
