"""``animate train prepare`` and ``ClipDataset``: seconds per stage, shard bytes per frame, sample read time.

    .venv/bin/python benchmarks/train_prepare.py [--video ../shared/data/driving/dance_musepose.mp4]
        [--size 576x1024] [--frames 48] [--references 4] [--window 16] [--json OUT.json]

Runs one clip through ``prepare_clip`` in this process (CPU), timing each stage from its progress reports
(pose = decode + MediaPipe; body = the driver's fit; frames = the second decode at the shard size; render =
the body renders and the dense flows from each reference), then reads ``ClipDataset`` samples of
``--window`` frames. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DANCE = ROOT.parent / "shared" / "data" / "driving" / "dance_musepose.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=DANCE)
    parser.add_argument("--size", default="576x1024")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--references", type=int, default=4)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from animate.train.data import ClipDataset
    from animate.train.prepare import PrepareOptions, prepare_clip

    torch.set_num_threads(1)
    width, height = (int(v) for v in args.size.split("x"))
    options = PrepareOptions(
        size=(width, height),
        fps=24.0,
        max_frames=args.frames,
        min_frames=min(args.frames, args.window),
        references=args.references,
    )
    stamps: dict[str, list[float]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        stamps.setdefault(stage, [now, now])[1] = now

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        entry = prepare_clip(args.video, Path(tmp), options, progress=progress)
        total = time.perf_counter() - started
        if entry["status"] != "done":
            raise SystemExit(f"not prepared: {entry}")
        count = entry["frames"]
        clip = Path(tmp) / "clips" / entry["clip"]
        shard_bytes = (clip / "shard.npz").stat().st_size
        order = list(stamps)
        rows = []
        previous_end = started
        for stage in order:
            _begin, end = stamps[stage]
            seconds = end - previous_end  # from the end of the previous stage: includes this stage's setup
            previous_end = end
            rows.append((stage, seconds, seconds / count))
        ds = ClipDataset(tmp, frames=min(args.window, count))
        ds[0]  # open the shard
        reads = []
        for epoch in range(args.samples):
            ds.set_epoch(epoch)
            t0 = time.perf_counter()
            ds[0]
            reads.append(time.perf_counter() - t0)

    print(
        f"prepare {args.video.name}: {count} frames at {width}x{height}, {args.references} references (CPU, 1 thread)"
    )
    print(f"{'stage':<10} {'seconds':>9} {'s/frame':>9}")
    for stage, seconds, per in rows:
        print(f"{stage:<10} {seconds:9.2f} {per:9.3f}")
    print(f"{'total':<10} {total:9.2f} {total / count:9.3f}")
    print(f"shard: {shard_bytes / 1e6:.1f} MB, {shard_bytes / count / 1e6:.2f} MB/frame")
    median = sorted(reads)[len(reads) // 2]
    print(
        f"ClipDataset[{min(args.window, count)} frames]: {median:.3f} s per sample (median of {len(reads)})"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "video": args.video.name,
                    "frames": count,
                    "size": [width, height],
                    "references": args.references,
                    "stages": {stage: round(seconds, 3) for stage, seconds, _ in rows},
                    "total_s": round(total, 3),
                    "shard_bytes": shard_bytes,
                    "sample_s": round(median, 4),
                },
                indent=1,
                sort_keys=True,
            )
        )


if __name__ == "__main__":
    main()
