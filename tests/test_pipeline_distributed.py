"""The tiles of each step split over two CPU processes (gloo) give the latents of one process."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipelines import AnimationPipeline, tile_indices
from pipelines.distributed import TileGroup, init_tile_group
from pipelines.testing import reinit_zero_layers, tiny_components

STEPS = 2
# name: (num_frames, tile_size, tile_overlap); with the prepended reference frame
CASES = {
    "three_tiles": (9, 4, 1),  # 10 frames: tiles at 1, 4, 7 -> rank 0 predicts two, rank 1 one
    "four_tiles": (12, 4, 1),  # 13 frames: tiles at 1, 4, 7, 10 -> two each
    "one_tile": (3, 4, 1),  # 4 frames: one tile, predicted by both ranks (nothing to exchange)
}


def _pipeline() -> AnimationPipeline:
    components = tiny_components(with_guidance_encoders=False)
    reinit_zero_layers(components["pose_guider"])  # so each tile's own pose features matter
    pipe = AnimationPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe: AnimationPipeline, case: str, tile_group: TileGroup | None = None) -> torch.Tensor:
    num_frames, tile_size, tile_overlap = CASES[case]
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    poses = torch.from_numpy(rng.random((num_frames, 3, 32, 32), dtype=np.float32))
    return pipe(
        image,
        pose_images=poses,
        height=32,
        width=32,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        tile_group=tile_group,
    ).frames


def _rank_run(rank: int, world_size: int, init_method: str, out_path: str) -> None:
    torch.set_num_threads(1)
    group = init_tile_group(rank, world_size, init_method, backend="gloo")
    pipe = _pipeline()
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    results = {}
    for case in CASES:
        calls.clear()
        results[case] = (_latents(pipe, case, group), len(calls))
    torch.save(results, f"{out_path}.{rank}")
    dist.destroy_process_group()


def test_tile_group_shares_round_robin():
    tiles = ["a", "b", "c", "d", "e"]
    assert TileGroup(0, 2).share(tiles) == ["a", "c", "e"]
    assert TileGroup(1, 2).share(tiles) == ["b", "d"]
    assert TileGroup(2, 3).share(tiles[:2]) == []
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\), got 2 for world_size 2"):
        TileGroup(2, 2)


def test_two_gloo_processes_give_the_latents_of_one(tmp_path):
    world_size = 2
    out_path = str(tmp_path / "latents")
    ranks = mp.spawn(
        _rank_run,
        args=(world_size, f"file://{tmp_path / 'rendezvous'}", out_path),
        nprocs=world_size,
        join=False,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: another matmul split differs by ~1e-7, which sigma 700 amplifies
    try:
        pipe = _pipeline()
        expected_latents = {case: _latents(pipe, case) for case in CASES}
    finally:
        torch.set_num_threads(threads)
    while not ranks.join():
        pass
    ranks = [torch.load(f"{out_path}.{rank}") for rank in range(world_size)]
    for case, (num_frames, tile_size, tile_overlap) in CASES.items():
        expected = expected_latents[case]
        tiles = len(tile_indices(num_frames + 1, tile_size, tile_overlap, anchor_first=True))
        assert tiles == {"three_tiles": 3, "four_tiles": 4, "one_tile": 1}[case]
        (latents0, calls0), (latents1, calls1) = (results[case] for results in ranks)
        # batched CFG: one UNet call per tile and step; round-robin gives rank 0 the extra tile
        shares = (1, 1) if tiles == 1 else (math.ceil(tiles / 2), tiles // 2)
        assert (calls0, calls1) == (shares[0] * STEPS, shares[1] * STEPS), case
        torch.testing.assert_close(latents0, latents1, rtol=0, atol=0)  # the same all-reduced sum on both
        assert latents0.shape == expected.shape == (1, num_frames, 4, 16, 16)
        assert (latents0 - expected).abs().max() <= 1e-5, case
