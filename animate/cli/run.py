"""``animate run``: reference photo + driving video -> mp4, through the ``Animator`` facade."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from animate.animator import AnimationOptions, Animator, Progress
from animate.cli.media import parse_size
from animate.cli.plan import parse_gpus
from animate.cli.progress import StageProgress, warnings_to
from animate.settings import Settings


def _import_engines() -> None:
    """torch, Warp, the body model's code and MediaPipe: imported here, so the seconds they take are reported
    as start-up (before the first stage), not as the decode stage that would import them otherwise."""
    import mediapipe  # noqa: F401

    import animate.engines.warp  # noqa: F401


def run(
    reference: Path = typer.Argument(..., help="Reference image of the person (JPEG, PNG, WebP)."),
    driving: Path = typer.Argument(..., help="Driving video with the motion."),
    output: Path = typer.Option(..., "-o", "--output", help="Output mp4."),
    engine: str = typer.Option(
        "auto",
        help="auto | warp | diffusion | wan (auto: wan with its weights and a GPU with room, else diffusion "
        "with weights + GPU, else warp).",
    ),
    artifacts: Path | None = typer.Option(None, help="Also write guidance previews into this directory."),
    size: str | None = typer.Option(None, help="WIDTHxHEIGHT (default: the reference's aspect in 576x1024)."),
    fps: float | None = typer.Option(None, help="Output frame rate (default: the driving video's)."),
    max_frames: int | None = typer.Option(None, "--max-frames", min=1, help="Only the first N frames."),
    seed: int = typer.Option(0, help="Random seed (diffusion)."),
    steps: int | None = typer.Option(
        None, min=1, max=200, help="Denoising steps (default: 25 for diffusion, 20 for wan)."
    ),
    guidance_scale: float | None = typer.Option(
        None, "--guidance-scale", help="Classifier-free guidance (default: 2.0 for diffusion, 1.0 for wan)."
    ),
    mode: str = typer.Option(
        "animate", help="wan: animate (the reference performs the motion) | replace (it replaces the driver)."
    ),
    segment_frames: int = typer.Option(
        77, "--segment-frames", help="wan: frames per generated segment (4n+1)."
    ),
    overlap_frames: int = typer.Option(
        1, "--overlap-frames", help="wan: frames a segment takes from the previous one (1 or 5)."
    ),
    resolution: str = typer.Option(
        "720p", help="wan: 480p | 720p, the generation area when --size is not given."
    ),
    retarget: str = typer.Option("bones", help="bones (reference bone lengths) | global (one scale+offset)."),
    body: bool = typer.Option(
        True, "--body/--no-body", help="Fit the 3D body (--no-body: the 2D skeleton field moves the person)."
    ),
    preset: str | None = typer.Option(
        None,
        help="mimicmotion | dispose: that system's published preprocessing, to reproduce its results "
        "(reference crop, every 2nd frame at 15 fps, one linear pose fit, its pose drawing; diffusion only).",
    ),
    tile_size: int | None = typer.Option(
        None, "--tile-size", help="Frames per UNet call (diffusion; default: the checkpoint's or preset's)."
    ),
    tile_overlap: int | None = typer.Option(
        None, "--tile-overlap", help="Frames shared by neighbouring tiles (diffusion; below --tile-size)."
    ),
    adapter: Path | None = typer.Option(
        None, "--adapter", help="Parts trained by `animate train run` (RUN_DIR/final), over the base weights."
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the memory / time plan (as `animate plan`) and exit; nothing heavy runs.",
    ),
    gpus: str | None = typer.Option(
        None, help="Spread the job over these GPUs, e.g. 0,1: the tiles of each step split, one process each."
    ),
    processes: int | None = typer.Option(
        None, help="Spread the job over N CPU processes (as --gpus cpu,cpu,...; for machines without a GPU)."
    ),
    identity: bool = typer.Option(
        False,
        "--identity",
        help="Require a face in the reference (exit 2, no_face_detected, without one); the identity score "
        "is reported either way when a face is found.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Animate REFERENCE with the motion of DRIVING and write an mp4."""
    options = AnimationOptions(
        engine=engine,
        size=parse_size(size),
        fps=fps,
        max_frames=max_frames,
        seed=seed,
        steps=steps,  # None: the engine's own default, known once `auto` has picked one
        guidance_scale=guidance_scale,
        mode=mode,
        segment_frames=segment_frames,
        overlap_frames=overlap_frames,
        resolution=resolution,
        retarget=retarget,
        body=body,
        preset=preset,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
        adapter=adapter,
        identity=identity,
    )
    options.validate()
    settings = Settings()
    devices = parse_gpus(gpus, processes)
    if options.engine == "wan" and devices:
        from animate.errors import AnimateError

        raise AnimateError("invalid_option", "the wan engine runs in one process: drop --gpus / --processes")
    if dry_run and options.engine == "wan":
        from animate.engines.wan import dry_run_plan

        planned = dry_run_plan(settings, reference, driving, options)
        typer.echo(json.dumps({"plan": planned}, indent=2) if as_json else "\n".join(
            f"{key:<24}{value}" for key, value in planned.items()
        ))  # fmt: skip
        return
    if dry_run:
        from animate.engines.plan import format_table, plan_job

        planned = plan_job(settings, reference, driving, options, gpus=max(1, len(devices)))
        typer.echo(json.dumps({"plan": planned.to_dict()}, indent=2) if as_json else format_table(planned))
        return
    # progress goes to stderr, one line per stage (redrawn in place in a terminal): stdout carries only
    # the result (JSON with --json)
    progress = StageProgress()
    if options.body and options.preset is None and settings.body_model is None:
        from animate.body import cache

        if not cache.is_built():
            progress.note(
                f"note: first use of the body model on this machine: building its data in {cache.cache_root()} "
                f"({cache.APPROX_SIZE}, {cache.APPROX_TIME}; `make install` does it ahead)"
            )

    _import_engines()

    def on_progress(p: Progress) -> None:
        progress(p.stage, p.step, p.total)

    with warnings_to(progress):
        try:
            if devices:  # one process per GPU, rank 0 here (animate.engines.parallel)
                from animate.engines.parallel import run_split

                result = run_split(
                    settings, devices, reference, driving, output, options, artifacts_dir=artifacts,
                    progress=on_progress,
                )  # fmt: skip
            else:
                result = Animator(settings).run(
                    reference, driving, output, options, artifacts_dir=artifacts, progress=on_progress
                )
        finally:
            progress.close()
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        w, h = result.size
        typer.echo(
            f"wrote {result.video} ({w}x{h}, {result.frames} frames, {result.fps:g} fps, {result.engine})"
        )
        for note in result.notes:
            typer.echo(f"  note: {note}")
        if result.identity is not None and result.identity["mean"] is not None:
            score = result.identity
            typer.echo(
                f"  identity: mean {score['mean']:.3f}, min {score['min']:.3f}, face in "
                f"{score['face_share']:.0%} of {score['frames']} sampled frames ({score['embedder']})"
            )
