"""pipelines.distributed without a pipeline: the round-robin share, the rank check, a one-rank gloo group in
this process, and (slow) a real two-process gloo group whose ``all_reduce`` sums each rank's tensors in place."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipelines.distributed import TileGroup, init_tile_group


def test_share_is_every_world_size_th_tile_from_the_rank():
    tiles = list(range(7))
    assert TileGroup(0, 1).share(tiles) == tiles
    assert TileGroup(0, 3).share(tiles) == [0, 3, 6]
    assert TileGroup(1, 3).share(tiles) == [1, 4]
    assert TileGroup(2, 3).share(tiles) == [2, 5]
    assert TileGroup(3, 4).share(tiles[:3]) == []
    assert TileGroup(1, 2).share(("a", "b", "c")) == ["b"]  # always a list


@pytest.mark.parametrize(("rank", "world_size"), [(2, 2), (-1, 2), (0, 0), (5, 3)])
def test_rank_must_lie_in_the_world(rank, world_size):
    with pytest.raises(
        ValueError, match=rf"^rank must be in \[0, world_size\), got {rank} for world_size {world_size}$"
    ):
        TileGroup(rank, world_size)


def test_group_defaults():
    group = TileGroup(1, 2)
    assert (group.group, group.backend) == (None, None)
    with pytest.raises(AttributeError):
        group.rank = 0  # frozen: a rank's place never changes during a job


@pytest.mark.skipif(torch.cuda.is_available(), reason="the default backend is nccl with CUDA")
def test_one_rank_group_in_this_process(tmp_path):
    group = init_tile_group(0, 1, f"file://{tmp_path / 'rendezvous'}")  # no CUDA: gloo
    try:
        assert group == TileGroup(0, 1, None, "gloo")
        assert TileGroup.from_process_group() == group
        sub = dist.new_group([0])
        assert TileGroup.from_process_group(sub) == TileGroup(0, 1, sub, "gloo")
        values, weights = torch.arange(3.0), torch.ones(2)
        group.all_reduce(values, weights)  # a sum over one rank
        assert torch.equal(values, torch.arange(3.0)) and torch.equal(weights, torch.ones(2))
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()


def _rank(rank: int, world_size: int, init_method: str, out_path: str) -> None:
    torch.set_num_threads(1)
    group = init_tile_group(rank, world_size, init_method, timeout=timedelta(seconds=60))
    values = torch.full((3,), float(rank + 1))
    weights = torch.arange(2.0) * (rank + 1)
    group.all_reduce(values, weights)
    torch.save(
        {"group": (group.rank, group.world_size, group.backend), "values": values, "weights": weights},
        f"{out_path}.{rank}",
    )
    dist.destroy_process_group()


@pytest.mark.slow  # each rank imports the whole pipelines package: a minute under load
def test_two_gloo_ranks_join_and_sum_in_place(tmp_path):
    out_path = str(tmp_path / "out")
    mp.spawn(_rank, args=(2, f"file://{tmp_path / 'rendezvous'}", out_path), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(f"{out_path}.{rank}")
        # the backend is gloo without CUDA (init_tile_group's default); group=None is the default group
        assert result["group"] == (rank, 2, "gloo")
        assert torch.equal(result["values"], torch.full((3,), 3.0))  # 1 + 2 on both ranks
        assert torch.equal(result["weights"], torch.tensor([0.0, 3.0]))
