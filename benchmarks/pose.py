"""Pose speed on CPU at 576x1024, decode included: whole-body (Holistic) and body-only (BlazePose).

    .venv/bin/python benchmarks/pose.py [--video PATH] [--frames N] [--size 576x1024]

Each row decodes the clip at the given size (in a thread, as ``estimate_video`` does), estimates every
frame in video mode, then tracks, fills gaps and smooths (``finish_sequence``); "draw" renders
DWPose-style skeletons of the result. The load average is printed: on a shared machine it explains a lot.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from animate.media import open_video
from animate.media.prefetch import prefetched
from animate.pose import MediaPipeEstimator, draw_pose, estimate_frames, finish_sequence

DANCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "driving" / "dance_musepose.mp4"


def _run(video_path: Path, frames: int, size: tuple[int, int], whole_body: bool) -> tuple[float, object]:
    video = open_video(video_path)
    with MediaPipeEstimator(whole_body=whole_body, segmentation=False) as estimator:
        start = time.perf_counter()
        candidates = estimate_frames(
            prefetched(video.frames(max_frames=frames, size=size)), estimator, width=size[0], height=size[1]
        )
        sequence = finish_sequence(candidates, size[0], size[1], video.fps)
        return time.perf_counter() - start, sequence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=DANCE)
    parser.add_argument("--frames", type=int, default=144)
    parser.add_argument("--size", default="576x1024")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    assert len(size) == 2
    _run(args.video, 8, size, True)  # warm-up: graph construction and model loading are not per-frame cost
    rows = []
    for label, whole_body in (("whole-body (Holistic)", True), ("body-only (BlazePose)", False)):
        seconds, sequence = _run(args.video, args.frames, size, whole_body)
        rows.append((label, len(sequence), seconds, sequence.detected_fraction()))
    start = time.perf_counter()
    for pose in sequence:
        draw_pose(pose, size[0], size[1])
    rows.append(("draw_pose (DWPose style)", len(sequence), time.perf_counter() - start, float("nan")))

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"pose: {args.video.name} at {size[0]}x{size[1]}, decode included, {os.cpu_count()} cores, load {load}"
    )
    print(f"| {'stage':<26} | {'frames':>6} | {'seconds':>7} | {'frames/s':>8} | {'person':>6} |")
    print(f"|{'-' * 28}|{'-' * 8}|{'-' * 9}|{'-' * 10}|{'-' * 8}|")
    for label, count, seconds, found in rows:
        person = "" if found != found else f"{found:.0%}"
        print(f"| {label:<26} | {count:>6} | {seconds:>7.2f} | {count / seconds:>8.1f} | {person:>6} |")


if __name__ == "__main__":
    main()
