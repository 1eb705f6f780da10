"""Training speed and memory per trainable set: clips per second and peak memory of ``animate train run``'s
loop (``animate.train.trainer.Trainer``), one process per configuration so each peak is its own.

CPU (default): the tiny test pipeline (``tests/_train_fixtures.py``) on 16x16 clips of 3 frames, float32.
``--full`` (CUDA): SVD-xt-sized modules with random weights (no download: the same configs as the published
checkpoints) at ``--size 576x1024`` and ``--frames 16``, ``--mixed-precision bf16``, gradient checkpointing.

    .venv/bin/python benchmarks/train.py [--steps 6] [--warmup 2] [--json benchmarks/results/train_cpu_tiny.json]
    .venv/bin/python benchmarks/train.py --full --frames 16 --size 576x1024 --json benchmarks/results/train_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = (
    "pose_guider",
    "pose_guider,guidance",
    "motion_controlnet",
    "lora",
    "temporal",
    "pose_guider,guidance,motion_controlnet,lora",
)


def full_size_pipeline():
    """SVD-xt's UNet / VAE / CLIP configs, MimicMotion's pose guider, Champ-sized encoders and DisPose's
    ControlNet, random weights (speed and memory do not depend on the values)."""
    import torch
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from controlnets import GuidanceFusion, MotionControlNet, PoseGuider
    from pipelines import AnimationPipeline
    from pipelines.testing import svd_scheduler

    with torch.device("cuda"):
        unet = UNetSpatioTemporalConditionModel()  # the defaults are SVD-xt's
        vae = AutoencoderKLTemporalDecoder(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=32,
                num_attention_heads=16,
                patch_size=14,
                image_size=224,
                projection_dim=1024,
                hidden_act="gelu",
            )
        )
        pose_guider = PoseGuider()
        guidance = GuidanceFusion(guidance_types=("depth", "normal", "semantic", "mask"))
        controlnet = MotionControlNet.from_unet(unet, residual_mode="once")
    return AnimationPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=svd_scheduler(),
        feature_extractor=CLIPImageProcessor(),
        pose_guider=pose_guider,
        guidance_encoders=guidance,
        motion_controlnet=controlnet,
    )


def measure(args: argparse.Namespace) -> dict:
    """One configuration in this process: seconds per optimizer step after the warm-up, peak memory."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from _train_fixtures import SyntheticClips, tiny_train_pipeline

    from animate.train.trainer import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    pipe = full_size_pipeline() if args.full else tiny_train_pipeline(with_motion_controlnet=True)
    dataset = SyntheticClips(count=max(2, args.batch), frames=args.frames, size=(width, height))
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            output_dir=Path(tmp),
            train=tuple(args.one.split(",")),
            frames=args.frames,
            steps=args.warmup + args.steps,
            lr=1e-5,
            batch=args.batch,
            mixed_precision=args.mixed_precision,
            gradient_checkpointing=args.gradient_checkpointing,
            validate_every=0,
            checkpoint_every=0,
            progress=False,
        )
        trainer = Trainer(config, dataset=dataset, pipeline=pipe)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        stamps.append(time.perf_counter())
        trainer.run(on_step=lambda step, loss: stamps.append(time.perf_counter()))
    timed = stamps[args.warmup + 1 :]
    seconds = (timed[-1] - stamps[args.warmup]) / len(timed)
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    trainable = sum(p.numel() for p in trainer.named.values())
    return {
        "train": args.one,
        "seconds_per_step": seconds,
        "clips_per_second": args.batch / seconds,
        "peak_memory_mb": peak_mb,
        "trainable_parameters": trainable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="SVD-xt-sized modules on CUDA.")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT of the clips.")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="Timed optimizer steps.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mixed-precision", default=None)
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sets", default=";".join(SETS), help="Trainable sets, ';' between them.")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child: one set
    parser.add_argument("--json", type=Path, default=None, help="Also write the table as JSON here.")
    args = parser.parse_args()
    args.frames = args.frames or (16 if args.full else 3)
    args.size = args.size or ("576x1024" if args.full else "16x16")
    args.mixed_precision = args.mixed_precision or ("bf16" if args.full else "no")
    if args.gradient_checkpointing is None:
        args.gradient_checkpointing = args.full
    if args.one is not None:
        print(json.dumps(measure(args)))
        return

    rows = []
    for trainable in args.sets.split(";"):
        command = [sys.executable, __file__, "--one", trainable, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
        if done.returncode != 0:
            rows.append({"train": trainable, "error": done.stderr.strip().splitlines()[-1:]})
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    device = "cuda" if args.full else "cpu"
    setup = (
        f"{device}, {args.size} x {args.frames} frames, batch {args.batch}, {args.mixed_precision}, "
        f"checkpointing {'on' if args.gradient_checkpointing else 'off'}, {args.threads} thread(s)"
    )
    print(setup)
    print(f"{'trainable set':<46} {'s/step':>8} {'clips/s':>8} {'peak MiB':>9} {'params':>11}")
    for row in rows:
        if "error" in row:
            print(f"{row['train']:<46} error: {row['error']}")
            continue
        print(
            f"{row['train']:<46} {row['seconds_per_step']:>8.3f} {row['clips_per_second']:>8.2f} "
            f"{row['peak_memory_mb']:>9.0f} {row['trainable_parameters']:>11,}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "setup": setup,
            "machine": platform.machine(),
            "python": platform.python_version(),
            "rows": rows,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
