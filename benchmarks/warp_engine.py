"""End-to-end speed of ``animate run`` with the CPU warp engine, per stage.

    .venv/bin/python benchmarks/warp_engine.py [--frames 96] [--reference ...] [--driving ...]

Prints seconds and frames/s per stage (decode, pose, body, motion, render+encode) and overall.
Target on 2 cores at 576x1024: >= 4 frames/s end to end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from animate.animator import AnimationOptions, Animator

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=DATA / "reference" / "woman_street_mimicmotion.jpg")
    parser.add_argument("--driving", type=Path, default=DATA / "driving" / "dance_musepose.mp4")
    parser.add_argument("--frames", type=int, default=96)
    args = parser.parse_args()
    animator = Animator()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = animator.run(
            args.reference,
            args.driving,
            Path(tmp) / "out.mp4",
            AnimationOptions(engine="warp", max_frames=args.frames),
        )
        total = time.perf_counter() - start
    n = result.frames
    print(
        f"warp engine: {args.reference.name} + {args.driving.name}, {n} frames at {result.size[0]}x{result.size[1]}"
    )
    print(f"{os.cpu_count()} CPUs")
    print(f"| {'stage':<16} | {'seconds':>8} | {'frames/s':>9} |")
    print(f"|{'-' * 18}|{'-' * 10}|{'-' * 11}|")
    for stage, seconds in result.timings.items():
        label = "render + encode" if stage == "render" else stage
        rate = f"{n / seconds:9.1f}" if seconds > 0.05 else f"{'-':>9}"
        print(f"| {label:<16} | {seconds:8.2f} | {rate} |")
    print(f"| {'end to end':<16} | {total:8.2f} | {n / total:9.2f} |  target >= 4")


if __name__ == "__main__":
    main()
