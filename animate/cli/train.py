"""``animate train``: prepare a training set from videos, then train the guidance paths on it.

``animate train prepare VIDEOS_DIR -o DATA_DIR`` decodes each video once with the inference stack and writes
one shard folder per clip (see ``animate.train.prepare`` for the layout). Other commands of the group are
registered below it.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    name="train",
    help="Prepare training data from videos and fine-tune the guidance paths.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("prepare")
def prepare(
    videos: Path = typer.Argument(..., help="A folder of videos (or one video file)."),
    output: Path = typer.Option(..., "-o", "--output", help="The data folder to write the shards into."),
    size: str = typer.Option("576x1024", "--size", help="Shard frame size WxH."),
    fps: float = typer.Option(
        24.0, "--fps", min=1.0, max=60.0, help="Resample every video to this frame rate."
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Videos prepared in parallel (processes)."),
    max_frames: int | None = typer.Option(
        None, "--max-frames", min=1, help="Keep at most this many frames per video."
    ),
    min_frames: int = typer.Option(
        16, "--min-frames", min=1, help="Skip videos shorter than this (reason too_short)."
    ),
    references: int = typer.Option(
        4, "--references", min=1, max=64, help="Frames per clip that may serve as the reference."
    ),
    body_model: Path | None = typer.Option(
        None,
        "--body-model",
        envvar="ANIMATE_BODY_MODEL",
        help="An SMPL / SMPL-H / SMPL-X .npz model file to fit instead of Anny (never shipped).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Decode each video once (pose, body renders, flows) and write resumable per-clip shards."""
    from animate.cli.guidance import parse_size
    from animate.train.prepare import PrepareOptions, prepare_videos

    w, h = parse_size(size, (1, 2))
    if body_model is not None:
        from animate.body import load_body

        load_body(body_model)  # a bad model file is the user's error, said once, not a skip per video
    options = PrepareOptions(
        size=(w, h),
        fps=fps,
        max_frames=max_frames,
        min_frames=min_frames,
        references=references,
        body_model=str(body_model) if body_model is not None else None,
    )
    summary = prepare_videos(videos, output, options, workers=workers, progress=progress)
    reasons = ", ".join(f"{code} {n}" for code, n in summary["skip_reasons"].items())
    typer.echo(
        f"{len(summary['done'])} clips ready ({summary['prepared_now']} new, {summary['already_done']} already"
        f" done), {len(summary['skipped'])} skipped{f' ({reasons})' if reasons else ''};"
        f" summary in {output / 'summary.json'}"
    )

