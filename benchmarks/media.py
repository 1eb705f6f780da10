"""Media speed on this machine: decode + scale, and H.264 encode, at the service's default 576x1024.

    .venv/bin/python benchmarks/media.py [--video ../shared/data/driving/dance_musepose.mp4] [--repeat 3]

Prints a table of frames per second (best of --repeat runs). Targets on 2 cores: decode+scale >= 100 fps,
encode (CRF 18, preset medium) >= 50 fps.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from animate.media import open_video, write_video

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "driving" / "dance_musepose.mp4"


def best_fps(run, repeat: int) -> tuple[float, int]:
    best, count = 0.0, 0
    for _ in range(repeat):
        start = time.perf_counter()
        count = run()
        best = max(best, count / (time.perf_counter() - start))
    return best, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--size", default="576x1024")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    video = open_video(args.video)
    rows = []

    fps, n = best_fps(lambda: sum(1 for _ in video.frames()), args.repeat)
    rows.append((f"decode {video.width}x{video.height} (no scale)", n, fps, ""))
    fps, n = best_fps(lambda: sum(1 for _ in video.frames(size=(width, height))), args.repeat)
    rows.append((f"decode + scale to {width}x{height}", n, fps, ">= 100"))

    frames = list(video.frames(size=(width, height)))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.mp4"
        for preset, target in (("medium", ">= 50"), ("fast", "")):
            fps, n = best_fps(
                lambda preset=preset: write_video(out, frames, video.fps, crf=18, preset=preset).frame_count,
                args.repeat,
            )
            rows.append((f"encode {width}x{height} H.264 CRF 18 {preset}", n, fps, target))
        fps, n = best_fps(
            lambda: write_video(out, frames, video.fps, crf=18, audio_from=args.video).frame_count,
            args.repeat,
        )
        rows.append((f"encode {width}x{height} CRF 18 medium + AAC audio", n, fps, ""))

    print(f"media benchmark: {args.video.name}, {os.cpu_count()} CPUs, best of {args.repeat}")
    print(f"| {'step':<46} | {'frames':>6} | {'frames/s':>8} | {'target':>7} |")
    print(f"|{'-' * 48}|{'-' * 8}|{'-' * 10}|{'-' * 9}|")
    for name, count, rate, target in rows:
        print(f"| {name:<46} | {count:>6} | {rate:>8.1f} | {target:>7} |")


if __name__ == "__main__":
    main()
