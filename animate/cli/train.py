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
    if not summary["done"]:
        from animate.errors import AnimateError

        found = len(summary["skipped"]) + len(summary["duplicates"])
        what = f"none of the {found} videos can be used" if found else "no video files found"
        raise AnimateError("no_clips", f"{what} in {videos}; see {output / 'summary.json'}")


@app.command("run")
def run(
    data: Path = typer.Option(..., "--data", help="A data folder written by `animate train prepare`."),
    base: Path = typer.Option(
        ..., "--base", help="Base weights: a weights folder or an AnimationPipeline folder."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="The run folder (checkpoints, logs, final/)."),
    train: str = typer.Option(
        "pose_guider,guidance",
        "--train",
        help="Comma list of the parts to train: pose_guider, guidance, motion_controlnet, lora, temporal.",
    ),
    frames: int = typer.Option(16, "--frames", min=1, help="Frames per training clip."),
    size: str | None = typer.Option(None, "--size", help="WIDTHxHEIGHT to train at (default: the shards')."),
    stride: int = typer.Option(1, "--stride", min=1, help="Frame step inside a clip."),
    steps: int = typer.Option(20000, "--steps", min=1, help="Optimizer steps."),
    lr: float = typer.Option(1e-5, "--lr", help="Peak learning rate."),
    lr_schedule: str = typer.Option(
        "constant_with_warmup", "--lr-schedule", help="constant | constant_with_warmup | linear | cosine."
    ),
    warmup: int = typer.Option(0, "--warmup", min=0, help="Warm-up steps."),
    batch: int = typer.Option(1, "--batch", min=1, help="Clips per process per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", min=1, help="Micro-batches per optimizer step."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no | fp16 | bf16 (GPU)."),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Recompute UNet activations in the backward pass."
    ),
    resume: str | None = typer.Option(None, "--resume", help="latest, or a checkpoint folder."),
    validate_every: int = typer.Option(
        500, "--validate-every", min=0, help="Validation video every N steps."
    ),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", min=0, help="Checkpoint every N steps."),
    keep_checkpoints: int = typer.Option(3, "--keep-checkpoints", min=1, help="Checkpoints kept."),
    ema: bool = typer.Option(False, "--ema", help="Keep an EMA of the trained weights (saved in final/)."),
    ema_decay: float = typer.Option(0.9999, "--ema-decay"),
    adam_8bit: bool = typer.Option(False, "--adam-8bit", help="8-bit AdamW when bitsandbytes is installed."),
    lora_rank: int = typer.Option(16, "--lora-rank", min=1),
    dropout: float = typer.Option(0.1, "--conditioning-dropout", help="P(drop the reference) for CFG."),
    face_loss_weight: float = typer.Option(
        0.0, "--face-loss-weight", help="Extra loss weight inside the prepared face boxes (identity)."
    ),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader worker processes."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="Clip the gradients' L2 norm to this."),
    fsdp: bool = typer.Option(
        False, "--fsdp", help="Shard the UNet over the processes (FSDP2; with accelerate launch --multi_gpu)."
    ),
) -> None:
    """Fine-tune the chosen parts on prepared clips; `accelerate launch -m animate.train run ...` for many GPUs."""
    from animate.cli.media import parse_size
    from animate.train.trainer import TrainConfig
    from animate.train.trainer import train as run_training

    config = TrainConfig(
        output_dir=output,
        base=base,
        data_dir=data,
        train=tuple(part.strip() for part in train.split(",") if part.strip()),
        frames=frames,
        size=parse_size(size),
        stride=stride,
        steps=steps,
        lr=lr,
        lr_schedule=lr_schedule,
        warmup_steps=warmup,
        batch=batch,
        grad_accum=grad_accum,
        mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing,
        resume=resume,
        validate_every=validate_every,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        ema=ema,
        ema_decay=ema_decay,
        adam_8bit=adam_8bit,
        lora_rank=lora_rank,
        conditioning_dropout=dropout,
        face_loss_weight=face_loss_weight,
        seed=seed,
        num_workers=workers,
        progress=progress,
        fsdp=fsdp,
        max_grad_norm=max_grad_norm,
    )
    result = run_training(config)
    if not result.main_process:  # rank 0 speaks for the run
        raise typer.Exit(130 if result.interrupted else 0)
    if result.interrupted:
        typer.echo(f"interrupted at step {result.steps}; continue with --resume latest", err=True)
        raise typer.Exit(130)
    losses = result.losses
    last = f", last loss {losses[-1]:.4f}" if losses else ""
    typer.echo(f"trained {result.steps} steps{last}; parts in {result.final_dir}")
