"""pipelines.distributed without a pipeline: the round-robin share, the rank check, the backend choice, a
one-rank gloo group in this process, two real gloo ranks (this process and a light child process: a subgroup,
a sum, and a collective that the other rank never joins timing out at the given timeout), and (slow) two
spawned ranks that import the whole ``pipelines`` package."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pipelines.distributed
from pipelines.distributed import TileGroup, default_backend, init_tile_group


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


def test_backend_is_nccl_on_cuda_and_gloo_on_the_cpu():
    assert default_backend(True) == "nccl"
    assert default_backend(False) == "gloo"


class _Joined(Exception):
    """Raised by the recording stand-in for ``dist.init_process_group``: the call's arguments are the test."""


def _record_init(calls: list):
    def init_process_group(backend, **kwargs):
        calls.append((backend, kwargs))
        raise _Joined

    return init_process_group


def test_init_asks_torch_for_nccl_where_cuda_is_available(monkeypatch):
    """The CUDA choice without a GPU: what ``init_tile_group`` hands ``torch.distributed`` when CUDA is
    reported available, with and without an explicit backend and timeout."""
    calls: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "init_process_group", _record_init(calls))
    for backend, timeout in [(None, None), ("gloo", timedelta(seconds=7)), (None, timedelta(minutes=3))]:
        with pytest.raises(_Joined):
            init_tile_group(1, 3, "tcp://127.0.0.1:1", backend, timeout)
    common = {"init_method": "tcp://127.0.0.1:1", "rank": 1, "world_size": 3}
    assert calls == [
        ("nccl", common),  # no timeout given: PyTorch's default (the argument is not passed)
        ("gloo", common | {"timeout": timedelta(seconds=7)}),  # an explicit backend wins over CUDA
        ("nccl", common | {"timeout": timedelta(minutes=3)}),
    ]


# A rank in a child process that imports only torch and pipelines/distributed.py (not the package's
# __init__, which loads diffusers: a minute under load). argv: pipelines folder, init method, flag folder.
_CHILD = r"""
import sys, time, types
from datetime import timedelta
from pathlib import Path

package = types.ModuleType("pipelines")
package.__path__ = [sys.argv[1]]
sys.modules["pipelines"] = package
import torch
import torch.distributed as dist
from pipelines.distributed import init_tile_group

torch.set_num_threads(1)
flags = Path(sys.argv[3])
(flags / "ready").touch()
group = init_tile_group(0, 2, sys.argv[2], "gloo", timedelta(seconds=120))
dist.new_group([0])
dist.new_group([1])
values, weights = torch.full((3,), 1.0), torch.tensor([0.0, 1.0])
group.all_reduce(values, weights)
torch.save({"group": (group.rank, group.world_size, group.backend), "values": values, "weights": weights},
           flags / "child.pt")
deadline = time.monotonic() + float(sys.argv[4])
while not (flags / "done").exists() and time.monotonic() < deadline:  # joins no other collective
    time.sleep(0.05)
dist.destroy_process_group()
"""

TIMEOUT_S = 12.0  # this rank's collective timeout; long enough for a loaded machine to keep the two in step
CHILD_WAIT_S = 60.0  # how long the child idles without joining: without the timeout the call waits for it


@pytest.mark.skipif(torch.cuda.is_available(), reason="the default backend is nccl with CUDA")
def test_two_ranks_sum_use_their_subgroup_and_time_out_without_the_other(tmp_path):
    """This process is rank 1 of 2 (so that a subgroup's rank differs from the world's), a child is rank 0."""
    folder = str(Path(pipelines.distributed.__file__).parent)
    init_method = f"file://{tmp_path / 'rendezvous'}"
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, folder, init_method, str(tmp_path), str(CHILD_WAIT_S)], env=env
    )
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "ready").exists():
            assert child.poll() is None and time.monotonic() < deadline, "the child rank did not start"
            time.sleep(0.05)
        group = init_tile_group(1, 2, init_method, timeout=timedelta(seconds=TIMEOUT_S))
        try:
            assert group == TileGroup(1, 2, None, "gloo")  # no CUDA: gloo; None: the default group
            dist.new_group([0])
            second = dist.new_group([1])
            values, weights = torch.full((3,), 2.0), torch.tensor([0.0, 2.0])
            group.all_reduce(values, weights)
            assert torch.equal(values, torch.full((3,), 3.0))  # 1 + 2: both tensors, summed in place
            assert torch.equal(weights, torch.tensor([0.0, 3.0]))
            # in the subgroup of rank 1 alone this process is rank 0 of 1, and a sum over it is its own value
            own = TileGroup.from_process_group(second)
            assert own == TileGroup(0, 1, second, "gloo")
            alone = torch.tensor([5.0, -1.0])
            own.all_reduce(alone)
            assert torch.equal(alone, torch.tensor([5.0, -1.0]))
            # a collective the other rank never joins fails after this rank's timeout, not PyTorch's 30 min
            start = time.monotonic()
            with pytest.raises(RuntimeError, match=rf"Timed out waiting {int(TIMEOUT_S * 1000)}ms"):
                group.all_reduce(torch.ones(1))
            waited = time.monotonic() - start
            assert TIMEOUT_S - 1 <= waited < CHILD_WAIT_S - 15, waited
        finally:
            (tmp_path / "done").touch()
            dist.destroy_process_group()
        assert child.wait(timeout=120) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    result = torch.load(tmp_path / "child.pt")
    assert result["group"] == (0, 2, "gloo")
    assert torch.equal(result["values"], torch.full((3,), 3.0))
    assert torch.equal(result["weights"], torch.tensor([0.0, 3.0]))
