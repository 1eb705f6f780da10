"""Peak host memory and wall time of the diffusion engine against video length (tiny weights, CPU).

    .venv/bin/python benchmarks/diffusion_length.py [--lengths 64,256,1024] [--size 128] [--steps 2]
        [--processes 2] [--json benchmarks/results/diffusion_length_cpu_tiny.json]

The whole job as a user runs it (``Animator.run``, engine diffusion: decode, pose, body fit, guidance, the
pipeline, mp4 encode) on the shared dance (``dance_musepose.mp4``, 288 frames, looped back and forth to the
longest length) with tiny random weights saved in the real converted layout (pose guider, three guidance
encoders, motion ControlNet; a VAE downsampling by 8 as SVD's, so latents are as small next to guidance as
at full size). Each length runs in a fresh process; a thread samples its RSS every 10 ms (and
``getrusage``'s maximum) and the stage in progress, so the table gives the peak of the whole job and of the
render stage (pipeline + decode + encode). Goal: peak RSS at the longest length within +15 % of the
shortest; render time linear in length (seconds per frame flat).

``--processes N`` also runs the render of ``--mp-length`` frames with the tiles of each step split over N
gloo processes (``pipelines.distributed``; each with ``--threads`` threads, as one GPU each) and reports the
speed-up over one process and the largest difference of the output frames.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DANCE = DATA / "driving" / "dance_musepose.mp4"
REFERENCE = DATA / "reference" / "hero_rgba_animateanyone.png"
LOOP_SIDE = 640  # the looped driving video's long side (pose estimation does not need 1920)


def save_tiny_weights(root: Path) -> Path:
    """Tiny random weights in the converted layout (``weights/converted``), downsampling by 8 everywhere."""
    import torch
    from diffusers import AutoencoderKLTemporalDecoder

    from animate.weights import CONVERTED_DIR
    from controlnets import GuidanceFusion, MotionControlNet, PoseGuider
    from pipelines import AnimationPipeline
    from pipelines.testing import (
        TINY_GUIDANCE_TYPES,
        TINY_POINT_CHANNELS,
        reinit_zero_layers,
        tiny_components,
    )

    components = tiny_components(with_guidance_encoders=False)
    torch.manual_seed(0)
    components["vae"] = AutoencoderKLTemporalDecoder(
        block_out_channels=[32, 32, 32, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        latent_channels=4,
    )
    torch.manual_seed(0)
    components["pose_guider"] = PoseGuider(block_out_channels=(8, 8, 16, 16), out_channels=32)
    torch.manual_seed(0)
    components["guidance_encoders"] = GuidanceFusion(
        guidance_types=TINY_GUIDANCE_TYPES,
        block_out_channels=(8, 8, 16, 16),
        out_channels=32,
        attention_num_heads=2,
        attention_norm_num_groups=8,
    )
    torch.manual_seed(0)
    components["motion_controlnet"] = MotionControlNet.from_unet(
        components["unet"],
        conditioning_embedding_out_channels=(8, 8, 16, 16),
        point_embedding_channels=TINY_POINT_CHANNELS,
        point_mid_channels=8,
        residual_mode="once",
    )
    for name in ("pose_guider", "guidance_encoders", "motion_controlnet"):
        reinit_zero_layers(components[name])  # every conditioning path steers
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    AnimationPipeline(**components).save_pretrained(root / CONVERTED_DIR)
    return root


def loop_video(source: Path, target: Path, frames: int) -> Path:
    """``source`` played forwards, backwards, forwards ... to ``frames`` frames, long side ``LOOP_SIDE``."""
    import cv2

    from animate.media import open_video, write_video

    video = open_video(source)
    scale = LOOP_SIDE / max(video.width, video.height)
    size = (round(video.width * scale / 2) * 2, round(video.height * scale / 2) * 2)
    clip = [cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in video.frames()]
    order = list(range(len(clip))) + list(range(len(clip) - 2, 0, -1))  # ping-pong, no repeated ends

    def looped():
        for i in range(frames):
            yield clip[order[i % len(order)]]

    write_video(target, looped(), video.fps)
    return target


class RssSampler:
    """The process' RSS every ``interval`` seconds: the peak overall and per stage."""

    def __init__(self, interval: float = 0.01) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.stage = "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.process.memory_info().rss
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), rss)
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def child(args: argparse.Namespace) -> None:
    """One job of ``args.frames`` frames in this process; prints one JSON line."""
    import torch

    from animate.animator import AnimationOptions, Animator
    from animate.settings import Settings

    torch.set_num_threads(args.threads)
    options = AnimationOptions(
        engine="diffusion",
        size=(args.size, args.size),
        max_frames=args.frames,
        steps=args.steps,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
        audio=False,
    )
    animator = Animator(Settings(weights_dir=args.weights))
    with RssSampler() as sampler, tempfile.TemporaryDirectory() as tmp:

        def progress(p) -> None:
            sampler.stage = p.stage

        start = time.perf_counter()
        result = animator.run(REFERENCE, args.video, Path(tmp) / "out.mp4", options, progress=progress)
        wall = time.perf_counter() - start
    peak = max(max(sampler.peaks.values()), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    render_peak = max(sampler.peaks.get(stage, 0) for stage in ("render", "encode"))
    record = {
        "frames": result.frames,
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(peak / 2**20, 1),
        "render_peak_rss_mib": round(render_peak / 2**20, 1),
        "peak_rss_by_stage_mib": {k: round(v / 2**20, 1) for k, v in sampler.peaks.items()},
        "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        "motion": result.motion,
        "parts": result.parts,
    }
    print("RESULT " + json.dumps(record), flush=True)


def _render_rank(rank: int, world_size: int, args: argparse.Namespace, workdir: str) -> None:
    """Prepare the job (every rank alike), then render it with this rank's share of each step's tiles."""
    import torch
    import torch.distributed as dist

    from animate.animator import AnimationOptions, Animator
    from animate.settings import Settings
    from pipelines.distributed import init_tile_group

    torch.set_num_threads(args.threads)
    group = None
    if world_size > 1:
        group = init_tile_group(rank, world_size, f"file://{workdir}/rendezvous_{world_size}", backend="gloo")
    options = AnimationOptions(
        engine="diffusion",
        size=(args.size, args.size),
        max_frames=args.mp_length,
        steps=args.steps,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
        audio=False,
    )
    prepared = Animator(Settings(weights_dir=args.weights)).prepare(REFERENCE, args.video, options)
    engine = prepared.engine
    if group is not None:  # the pipeline's tile_group argument, through the engine's call arguments
        engine.call_kwargs = {**engine.call_kwargs, "tile_group": group}
    if group is not None:
        dist.barrier()
    start = time.perf_counter()
    frames = np.stack(list(engine.render(prepared.bundle)))
    seconds = time.perf_counter() - start
    prepared.bundle.close()
    if rank == 0:
        np.save(f"{workdir}/frames_{world_size}.npy", frames)
        Path(f"{workdir}/seconds_{world_size}").write_text(str(seconds))
    if group is not None:
        dist.destroy_process_group()


def run_processes(args: argparse.Namespace) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as workdir:
        _render_rank(0, 1, args, workdir)
        mp.spawn(_render_rank, args=(args.processes, args, workdir), nprocs=args.processes, join=True)
        one, many = (np.load(f"{workdir}/frames_{n}.npy") for n in (1, args.processes))
        seconds = {n: float(Path(f"{workdir}/seconds_{n}").read_text()) for n in (1, args.processes)}
    return {
        "frames": args.mp_length,
        "processes": args.processes,
        "threads_per_process": args.threads,
        "render_s_1": round(seconds[1], 2),
        f"render_s_{args.processes}": round(seconds[args.processes], 2),
        "speedup": round(seconds[1] / seconds[args.processes], 2),
        "max_abs_diff_uint8": int(np.abs(one.astype(int) - many.astype(int)).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="64,256,1024")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--tile-size", type=int, default=16)
    parser.add_argument("--tile-overlap", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--mp-length", type=int, default=96)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    lengths = [int(n) for n in args.lengths.split(",")]
    with tempfile.TemporaryDirectory(prefix="diffusion-length-") as tmp:
        work = Path(tmp)
        args.weights = save_tiny_weights(work / "weights")
        args.video = loop_video(DANCE, work / "dance_loop.mp4", max([*lengths, args.mp_length]))
        runs = []
        for n in lengths:
            command = [
                sys.executable, __file__, "--child", "--frames", str(n), "--weights", str(args.weights),
                "--video", str(args.video), "--size", str(args.size), "--steps", str(args.steps),
                "--tile-size", str(args.tile_size), "--tile-overlap", str(args.tile_overlap),
                "--threads", str(args.threads),
            ]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                sys.exit(f"the {n}-frame run failed:\n{done.stderr[-4000:]}")
            runs.append(json.loads(lines[-1][len("RESULT ") :]))
            print(f"{n} frames done in {runs[-1]['wall_s']} s", flush=True)
        multi = run_processes(args) if args.processes > 1 else None

    base = runs[0]
    print(f"\nsize {args.size}x{args.size}, {args.steps} steps, tiles {args.tile_size}/{args.tile_overlap}, "
          f"{args.threads} thread(s); plan: {base['parts'].get('plan', '-')}")  # fmt: skip
    header = (
        f"{'frames':>6} | {'peak RSS MiB':>12} | {'vs first':>8} | {'render-stage peak':>17} | "
        f"{'render s':>8} | {'render s/frame':>14} | {'total s':>7}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        render = run["timings_s"]["render"]
        print(
            f"{run['frames']:>6} | {run['peak_rss_mib']:>12.1f} | "
            f"{run['peak_rss_mib'] / base['peak_rss_mib'] - 1:>+8.1%} | {run['render_peak_rss_mib']:>17.1f} | "
            f"{render:>8.2f} | {render / run['frames']:>14.4f} | {run['wall_s']:>7.2f}"
        )
    if multi is not None:
        n = multi["processes"]
        print(
            f"\ntiles over {n} processes ({multi['frames']} frames): render {multi['render_s_1']} s -> "
            f"{multi[f'render_s_{n}']} s, speed-up {multi['speedup']}x, max |diff| {multi['max_abs_diff_uint8']} "
            "(uint8 frames)"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "diffusion_length",
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
            "settings": {
                k: v
                for k, v in vars(args).items()
                if k in ("size", "steps", "tile_size", "tile_overlap", "threads")
            },
            "runs": runs,
            "processes": multi,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
