"""Seconds per denoising step with the tiles of each step split over processes (gloo on CPU), tiny components.

Runs the same call in 1 process and in ``--processes`` processes (``pipelines.distributed``; each process
``--threads`` threads, as one GPU each), after one warm-up call; s/step is rank 0's median time between
step ends; max |diff| compares the final latents with the 1-process run.

    .venv/bin/python benchmarks/diffusion_tiles_mp.py --processes 2 [--frames 24] [--size 32] [--steps 4]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipelines import AnimationPipeline, tile_indices
from pipelines.distributed import init_tile_group
from pipelines.testing import reinit_zero_layers, tiny_components


def _rank_run(rank: int, world_size: int, args: argparse.Namespace, workdir: str) -> None:
    torch.set_num_threads(args.threads)
    group = init_tile_group(rank, world_size, f"file://{workdir}/rendezvous_{world_size}", backend="gloo")
    components = tiny_components(with_guidance_encoders=False)
    reinit_zero_layers(components["pose_guider"])
    pipe = AnimationPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    poses = torch.from_numpy(rng.random((args.frames, 3, args.size, args.size), dtype=np.float32))
    step_ends: list[float] = []

    def on_step_end(pipe, step, t, callback_kwargs):
        step_ends.append(time.perf_counter())
        return callback_kwargs

    def call(steps: int) -> torch.Tensor:
        return pipe(
            image,
            pose_images=poses,
            height=args.size,
            width=args.size,
            tile_size=args.tile_size,
            tile_overlap=args.tile_overlap,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
            callback_on_step_end=on_step_end,
            tile_group=group,
        ).frames

    call(1)  # warm-up
    step_ends.clear()
    latents = call(args.steps)
    if rank == 0:
        seconds = statistics.median(b - a for a, b in itertools.pairwise(step_ends))
        torch.save({"latents": latents, "seconds": seconds}, f"{workdir}/result_{world_size}.pt")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--tile-size", type=int, default=8)
    parser.add_argument("--tile-overlap", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    tiles = len(tile_indices(args.frames + 1, args.tile_size, args.tile_overlap, anchor_first=True))
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for world_size in sorted({1, args.processes}):
            mp.spawn(_rank_run, args=(world_size, args, workdir), nprocs=world_size, join=True)
            rows.append((world_size, torch.load(Path(workdir) / f"result_{world_size}.pt")))
    single = rows[0][1]["latents"]
    print(
        f"{args.frames} frames at {args.size}x{args.size}, tiles of {args.tile_size} (overlap {args.tile_overlap})"
    )
    print(f"{'processes':>9} {'tiles':>5} {'s/step':>8} {'speed-up':>8} {'max |diff|':>10}")
    for world_size, result in rows:
        diff = (result["latents"] - single).abs().max().item()
        speed_up = rows[0][1]["seconds"] / result["seconds"]
        print(f"{world_size:>9} {tiles:>5} {result['seconds']:>8.3f} {speed_up:>8.2f} {diff:>10.2e}")


if __name__ == "__main__":
    main()
