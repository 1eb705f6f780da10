"""What ``--artifacts`` (guidance previews; every server job writes them) costs next to the job itself.

The shared dance on the shared photo (warp engine, body path) is prepared once, the result video is rendered
(render + encode), then the previews are written at the output size (divisor 1) and at the preview size
(``animate.animator.PREVIEW_MAX_SIDE``). CPU seconds of this process (all its threads: drawing, rendering,
x264) are the figure to compare on a shared machine; wall seconds are printed too.

Before previews became their own stage (each preview its own pass at the output size, skeletons on DWPose's
2160 px canvas), the same 96 frames took 17.6-19.5 CPU s here, next to 7.8-8.8 for the result.

    .venv/bin/python benchmarks/previews.py --frames 96
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import animate.animator as module
from animate.animator import AnimationOptions, Animator, _Reporter, preview_divisor
from animate.cli import quiet
from animate.media import write_video

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def clock(work) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--reference", default=str(DATA / "reference" / "woman_street_mimicmotion.jpg"))
    parser.add_argument("--driving", default=str(DATA / "driving" / "dance_musepose.mp4"))
    args = parser.parse_args()
    quiet.install([])
    animator = Animator()
    options = AnimationOptions(engine="warp", max_frames=args.frames)
    prep_cpu, prep_wall = clock(
        lambda: setattr(main, "prepared", animator.prepare(args.reference, args.driving, options))
    )
    prepared = main.prepared
    bundle, size = prepared.bundle, prepared.bundle.size
    rows = [("job: decode..motion", "-", prep_cpu, prep_wall)]
    with tempfile.TemporaryDirectory() as folder:
        # the result first: it also warms the body renderer's kernels up for the previews after it
        cpu, wall = clock(
            lambda: write_video(Path(folder) / "result.mp4", prepared.engine.render(bundle), bundle.fps)
        )
        result = ("result: render+encode", f"{size[0]}x{size[1]}", cpu, wall)
        for label, divisor in (
            ("previews, output size", 1),
            ("previews, preview size", preview_divisor(size)),
        ):
            saved = module.PREVIEW_MAX_SIDE
            module.PREVIEW_MAX_SIDE = max(size) if divisor == 1 else saved
            try:
                out = Path(folder) / f"d{divisor}"
                cpu, wall = clock(
                    lambda out=out: animator._write_artifacts(
                        out, bundle, prepared.targets, _Reporter(None, None)
                    )
                )
            finally:
                module.PREVIEW_MAX_SIDE = saved
            w, h = size[0] // divisor, size[1] // divisor
            rows.append((label, f"{w}x{h}", cpu, wall))
        rows.append(result)
    quiet.uninstall()
    print(f"{bundle.num_frames} frames of {Path(args.driving).name}, output {size[0]}x{size[1]}, body path")
    print(f"{'part':<24} {'size':>9} {'CPU s':>7} {'wall s':>7}")
    for label, shown, cpu, wall in rows:
        print(f"{label:<24} {shown:>9} {cpu:7.1f} {wall:7.1f}")


if __name__ == "__main__":
    main()
