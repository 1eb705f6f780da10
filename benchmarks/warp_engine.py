"""End-to-end speed of ``animate run`` with the CPU warp engine, per stage.

    .venv/bin/python benchmarks/warp_engine.py [--frames 96] [--repeat 3] [--no-body] [--loop K]
                                               [--reference ...] [--driving ...]

Runs the whole job (decode to mp4: pose, the 3D body fits of the reference and the driving video,
motion, render + encode) ``--repeat`` times with one ``Animator`` and prints the best run's seconds and
frames/s per stage, with the load average before each run (the machine may be shared) and the CPU time
the job used, which other load does not inflate much (4 frames/s on 2 cores needs at most 500 CPU-ms per
frame, and both cores busy). The first run also pays one-off loads (body model, kernels); the best of
several shows the steady state. The H.264
preset is the settings' (``ANIMATE_OUTPUT_PRESET``, default medium); it is printed with the table.
Each run's peak resident memory (sampled every 50 ms) is printed too; ``--loop K`` drives with the clip
played K times in a row (written once to a temporary mp4), so memory can be compared across lengths
(``--frames 288`` vs ``--loop 5 --frames 1440``: it must stay flat).
Target on 2 cores at 576x1024 (issue 18): >= 6 frames/s end to end for the 288-frame dance, once warm.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

from animate.animator import AnimationOptions, AnimationResult, Animator
from animate.media import open_video, write_video

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import PeakRSS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run_once(
    animator: Animator, args: argparse.Namespace, driving: Path
) -> tuple[AnimationResult, float, float, float]:
    """The result, its wall seconds, the CPU seconds this process spent on it (all threads) and its peak
    resident memory in MB."""
    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as rss:
        cpu, start = time.process_time(), time.perf_counter()
        result = animator.run(
            args.reference,
            driving,
            Path(tmp) / "out.mp4",
            AnimationOptions(engine="warp", max_frames=args.frames, body=args.body),
        )
        return result, time.perf_counter() - start, time.process_time() - cpu, rss.peak


def looped(source: Path, times: int, folder: Path) -> Path:
    """``source`` played ``times`` times in a row, as an mp4 in ``folder`` (fast preset, no audio)."""
    video = open_video(source)
    frames = itertools.chain.from_iterable(video.frames() for _ in range(times))
    target = folder / f"{source.stem}_x{times}.mp4"
    write_video(target, frames, video.fps, preset="ultrafast")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=DATA / "reference" / "woman_street_mimicmotion.jpg")
    parser.add_argument("--driving", type=Path, default=DATA / "driving" / "dance_musepose.mp4")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--body", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--loop", type=int, default=1, help="drive with the clip played this many times")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        driving = looped(args.driving, args.loop, Path(folder)) if args.loop > 1 else args.driving
        runs = measure(args, driving)
    report(args, runs)


def measure(args: argparse.Namespace, driving: Path) -> list[tuple]:
    animator = Animator()
    runs = []
    for i in range(args.repeat):
        load = os.getloadavg()
        result, total, cpu, peak = run_once(animator, args, driving)
        runs.append((total, result, load, cpu, peak, animator))
        print(
            f"run {i + 1}: {total:6.2f} s, {result.frames / total:5.2f} frames/s, {cpu:6.2f} CPU s, "
            f"peak RSS {peak:.0f} MB (load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
            f"motion: {result.motion})"
        )
    return runs


def report(args: argparse.Namespace, runs: list[tuple]) -> None:
    total, result, load, cpu, peak, animator = min(runs, key=lambda run: run[0])
    n = result.frames
    print(
        f"\nwarp engine: {args.reference.name} + {args.driving.name} x{args.loop}, {n} frames at "
        f"{result.size[0]}x{result.size[1]}, {os.cpu_count()} CPUs, motion: {result.motion}, "
        f"x264 preset {animator.settings.output_preset} crf {animator.settings.output_crf}; best of {args.repeat}"
    )
    for note in result.notes:
        print(f"note: {note}")
    print(f"| {'stage':<16} | {'seconds':>8} | {'frames/s':>9} |")
    print(f"|{'-' * 18}|{'-' * 10}|{'-' * 11}|")
    for stage, seconds in result.timings.items():
        label = "render + encode" if stage == "render" else stage
        rate = f"{n / seconds:9.1f}" if seconds > 0.05 else f"{'-':>9}"
        print(f"| {label:<16} | {seconds:8.2f} | {rate} |")
    print(f"| {'end to end':<16} | {total:8.2f} | {n / total:9.2f} |  target >= 6")
    print(f"load average before the best run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    # What the job costs whatever else runs: at most 2 CPU-seconds per wall second on 2 cores.
    print(f"CPU time of the best run: {cpu:.2f} s = {cpu / n * 1000:.0f} ms per frame")
    print(f"peak RSS: {max(run[4] for run in runs):.0f} MB over the runs, {peak:.0f} MB in the best")


if __name__ == "__main__":
    main()
