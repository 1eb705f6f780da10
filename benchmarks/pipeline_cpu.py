"""Per-step overhead of AnimationPipeline vs diffusers' StableVideoDiffusionPipeline, same tiny UNet, CPU.

Per-step time = (time at ``--steps-high`` - time at ``--steps-low``) / difference, so image encoding,
guidance encoding and decoding cancel out; each point is the fastest of ``--repeats`` interleaved runs.

    .venv/bin/python benchmarks/pipeline_cpu.py [--frames 8] [--size 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from diffusers import StableVideoDiffusionPipeline

from pipelines import AnimationPipeline, tile_indices
from pipelines.testing import reinit_zero_layers, tiny_components


def _seconds(call: Callable[[int], object], steps: int) -> float:
    start = time.perf_counter()
    call(steps)
    return time.perf_counter() - start


def per_step_all(calls: list[Callable[[int], object]], low: int, high: int, repeats: int) -> list[float]:
    """Rounds interleave every case (contention hits all alike); the fastest run of each point counts."""
    for call in calls:
        call(1)  # warm-up
    lows: list[list[float]] = [[] for _ in calls]
    highs: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for index, call in enumerate(calls):
            lows[index].append(_seconds(call, low))
            highs[index].append(_seconds(call, high))
    return [(min(h) - min(lo)) / (high - low) for lo, h in zip(lows, highs, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps-low", type=int, default=2)
    parser.add_argument("--steps-high", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    components = tiny_components()
    reinit_zero_layers(components["pose_guider"])
    reinit_zero_layers(components["guidance_encoders"])
    svd = StableVideoDiffusionPipeline(
        **{k: v for k, v in components.items() if k not in ("pose_guider", "guidance_encoders")}
    )
    ours = AnimationPipeline(**components)
    for pipe in (svd, ours):
        pipe.set_progress_bar_config(disable=True)

    size, frames = args.size, args.frames
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    poses = torch.rand(frames, 3, size, size, generator=torch.Generator().manual_seed(1))
    depth = torch.rand(frames, 3, size, size, generator=torch.Generator().manual_seed(2))
    common = {
        "height": size,
        "width": size,
        "num_frames": frames,
        "output_type": "latent",
        "max_guidance_scale": 2.5,
    }

    def svd_call(steps: int):
        return svd(image, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **common)

    def ours_call(**extra):
        def call(steps: int):
            kwargs = {"prepend_reference": False, "tile_size": frames} | common | extra
            return ours(
                image, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **kwargs
            )

        return call

    cases = [
        ("StableVideoDiffusionPipeline", svd_call, 1),
        ("AnimationPipeline, no guidance, 1 tile", ours_call(), 1),
        ("AnimationPipeline, pose guidance, 1 tile", ours_call(pose_images=poses), 1),
        (
            "AnimationPipeline, pose + depth, 1 tile",
            ours_call(pose_images=poses, guidance_maps={"depth": depth}),
            1,
        ),
        ("AnimationPipeline, pose, sequential CFG", ours_call(pose_images=poses, cfg_mode="sequential"), 2),
    ]
    tiles = max(2, frames // 2) + 1
    n_tiles = len(tile_indices(frames + 1, tiles, 2, anchor_first=True))
    tiled = ours_call(pose_images=poses, tile_size=tiles, tile_overlap=2, prepend_reference=True)
    cases.append((f"AnimationPipeline, pose, {n_tiles} tiles of {tiles} (incl. ref)", tiled, n_tiles))
    timings = per_step_all([call for _, call, _ in cases], args.steps_low, args.steps_high, args.repeats)
    print(
        f"tiny components, {frames} frames of {size}x{size}, CFG on, {args.threads} thread(s), torch {torch.__version__}"
    )
    print(f"| {'pipeline':<50} | {'UNet calls/step':>15} | {'ms/step':>8} | {'vs SVD':>8} |")
    print(f"|{'-' * 52}|{'-' * 17}|{'-' * 10}|{'-' * 10}|")
    for (name, _, calls), seconds in zip(cases, timings, strict=True):
        ratio = f"{100 * (seconds / timings[0] - 1):+7.1f}%" if calls == 1 else "-"
        print(f"| {name:<50} | {calls:>15} | {seconds * 1000:>8.1f} | {ratio:>8} |")


if __name__ == "__main__":
    main()
