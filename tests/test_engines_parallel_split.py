"""``animate.engines.parallel``'s orchestration with its collaborators replaced by recorders: the spawn context
and its processes, the group join, ``Animator`` and the group teardown. Each test writes out what the module
docstring promises: one spawned process per extra device (rank r on ``devices[r]``, the same inputs, a shared
``file://`` rendezvous in a temporary folder), rank 0 running ``Animator.run`` in this process on a tile
group, the peer's own error replacing rank 0's "connection closed", children joined (60 s after success, 5 s
after a failure) and terminated when they hang, and the ``nccl`` / ``gloo`` choice with the CUDA device set.
Nothing is spawned or rendered here (``test_engines_parallel.py`` renders through a one-rank group)."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from animate.engines import parallel
from animate.errors import AnimateError
from animate.settings import Settings

SETTINGS = Settings()


class FakeProcess:
    def __init__(self, log: list, alive_after_join: bool, **kwargs) -> None:
        self.kwargs, self.log, self.alive = kwargs, log, alive_after_join
        self.joins: list = []

    def start(self) -> None:
        self.log.append(("start", self.kwargs["name"]))

    def join(self, timeout=None) -> None:
        self.joins.append(timeout)
        self.log.append(("join", self.kwargs["name"], timeout))

    def is_alive(self) -> bool:
        return self.alive

    def terminate(self) -> None:
        self.log.append(("terminate", self.kwargs["name"]))
        self.alive = False


class Recorder:
    """Replaces the spawn context, ``_join``, ``Animator`` and ``destroy_process_group``; ``run`` is what
    rank 0's ``Animator.run`` does (a callable given the workdir, or None to succeed)."""

    def __init__(self, monkeypatch, run=None, hang: bool = False, reason: str | None = None) -> None:
        import multiprocessing

        import torch.distributed as dist

        import animate.animator
        import animate.engines

        self.log: list = []
        self.processes: list[FakeProcess] = []
        self.contexts: list[str] = []
        self.reasons: list = []
        recorder = self

        class Context:
            def Process(self, **kwargs):
                process = FakeProcess(recorder.log, hang, **kwargs)
                recorder.processes.append(process)
                return process

        def get_context(method):
            recorder.contexts.append(method)
            return Context()

        def join(rank, world, device, init, backend):
            recorder.log.append(("join-group", rank, world, device, init, backend))
            recorder.init = init
            return "group"

        class FakeAnimator:
            def __init__(self, settings, tile_group=None) -> None:
                recorder.log.append(("animator", settings, tile_group))

            def run(self, *args, **kwargs):
                recorder.log.append(("run", args, kwargs))
                recorder.workdir = Path(recorder.init.removeprefix("file://")).parent
                assert recorder.workdir.is_dir()
                if run is not None:
                    run(recorder.workdir)
                return SimpleNamespace(notes=["earlier note"])

        def diffusion_reason(settings, require_gpu=True):
            recorder.reasons.append(require_gpu)
            return reason

        monkeypatch.setattr(multiprocessing, "get_context", get_context)
        monkeypatch.setattr(parallel, "_join", join)
        monkeypatch.setattr(animate.animator, "Animator", FakeAnimator)
        monkeypatch.setattr(dist, "destroy_process_group", lambda: recorder.log.append(("leave",)))
        monkeypatch.setattr(animate.engines, "diffusion_unavailable_reason", diffusion_reason)

    def events(self, kind: str) -> list:
        return [event for event in self.log if event[0] == kind]


def _options(**kwargs):
    from animate.animator import AnimationOptions

    return AnimationOptions(engine="diffusion", **kwargs)


def test_three_cpu_devices_spawn_two_ranks_and_run_rank_0_here(monkeypatch, tmp_path) -> None:
    rec = Recorder(monkeypatch)
    options = _options(max_frames=5)
    progress, cancel = (lambda *a: None), (lambda: False)
    result = parallel.run_split(
        SETTINGS, ["cpu", "cpu", "cpu"], tmp_path / "ref.png", tmp_path / "drv.mp4", tmp_path / "out.mp4",
        options, artifacts_dir=tmp_path / "art", progress=progress, should_cancel=cancel,
    )  # fmt: skip
    assert rec.contexts == ["spawn"]  # CUDA cannot start in a forked child
    assert rec.reasons == [False]  # CPU ranks need no GPU
    init = rec.init
    workdir = rec.workdir
    assert init == f"file://{workdir}/rendezvous" and workdir.name.startswith("animate-split-")
    assert not workdir.exists()  # the temporary folder is gone afterwards
    inputs = (SETTINGS, str(tmp_path / "ref.png"), str(tmp_path / "drv.mp4"), options, str(workdir))
    assert [p.kwargs for p in rec.processes] == [
        {"target": parallel._rank_main, "args": (1, 3, "cpu", init, "gloo", *inputs), "name": "animate-rank1",
         "daemon": True},
        {"target": parallel._rank_main, "args": (2, 3, "cpu", init, "gloo", *inputs), "name": "animate-rank2",
         "daemon": True},
    ]  # fmt: skip
    # the children start before rank 0 joins (the rendezvous needs them all); rank 0 leaves, then joins them
    assert rec.log == [
        ("start", "animate-rank1"),
        ("start", "animate-rank2"),
        ("join-group", 0, 3, "cpu", init, "gloo"),
        ("animator", SETTINGS, "group"),
        ("run", (tmp_path / "ref.png", tmp_path / "drv.mp4", tmp_path / "out.mp4", options),
         {"artifacts_dir": tmp_path / "art", "progress": progress, "should_cancel": cancel}),
        ("leave",),
        ("join", "animate-rank1", 60),
        ("join", "animate-rank2", 60),
    ]  # fmt: skip
    assert result.notes == ["earlier note", "tiles split over 3 processes (cpu, cpu, cpu)"]


def test_default_options_are_made_and_checked(monkeypatch, tmp_path) -> None:
    from animate.animator import AnimationOptions

    rec = Recorder(monkeypatch)
    parallel.run_split(SETTINGS, ["cpu"], "r.png", "d.mp4", "o.mp4")
    ((_, args, kwargs),) = rec.events("run")
    assert args == ("r.png", "d.mp4", "o.mp4", AnimationOptions())
    assert kwargs == {"artifacts_dir": None, "progress": None, "should_cancel": None}
    assert rec.processes == []  # one device: nothing spawned
    with pytest.raises(AnimateError) as err:
        parallel.run_split(SETTINGS, ["cpu", "cpu"], "r.png", "d.mp4", "o.mp4", _options(steps=0))
    assert err.value.code == "invalid_option"


def test_warp_is_refused_before_anything_is_spawned(monkeypatch) -> None:
    rec = Recorder(monkeypatch)
    with pytest.raises(AnimateError) as err:
        parallel.run_split(SETTINGS, ["cpu", "cpu"], "r.png", "d.mp4", "o.mp4", _warp())
    assert (err.value.code, err.value.message) == (
        "invalid_option", "--gpus splits the diffusion engine's tiles: not with --engine warp"
    )  # fmt: skip
    assert rec.contexts == [] and rec.log == []


def _warp():
    from animate.animator import AnimationOptions

    return AnimationOptions(engine="warp")


def test_a_peers_error_replaces_rank_0s_connection_error(monkeypatch, tmp_path) -> None:
    def peer_fails(workdir: Path) -> None:
        (workdir / "rank2.error.json").write_text(
            json.dumps({"code": "out_of_memory", "message": "GPU full"})
        )
        raise RuntimeError("Connection closed by peer")

    rec = Recorder(monkeypatch, run=peer_fails)
    with pytest.raises(AnimateError) as err:
        parallel.run_split(SETTINGS, ["cpu", "cpu", "cpu"], "r.png", "d.mp4", "o.mp4", _options())
    assert (err.value.code, err.value.message) == ("out_of_memory", "process 2 of 3: GPU full")
    assert isinstance(err.value.__cause__, RuntimeError)
    assert rec.events("leave") == [("leave",)]
    # after a failure the children get 5 s, not 60
    assert [p.joins for p in rec.processes] == [[5], [5]]


def test_rank_0s_own_user_error_or_an_error_without_a_peer_is_kept(monkeypatch) -> None:
    def own_error(workdir: Path) -> None:
        (workdir / "rank1.error.json").write_text(json.dumps({"code": "x", "message": "peer"}))
        raise AnimateError("invalid_input", "the reference has no person")

    Recorder(monkeypatch, run=own_error)
    with pytest.raises(AnimateError) as err:
        parallel.run_split(SETTINGS, ["cpu", "cpu"], "r.png", "d.mp4", "o.mp4", _options())
    assert (err.value.code, err.value.message) == ("invalid_input", "the reference has no person")

    def no_peer(workdir: Path) -> None:
        raise RuntimeError("boom")

    rec = Recorder(monkeypatch, run=no_peer)
    with pytest.raises(RuntimeError, match=r"^boom$"):
        parallel.run_split(SETTINGS, ["cpu", "cpu"], "r.png", "d.mp4", "o.mp4", _options())
    assert rec.events("leave") == [("leave",)]


def test_a_child_that_hangs_is_terminated(monkeypatch) -> None:
    rec = Recorder(monkeypatch, hang=True)
    parallel.run_split(SETTINGS, ["cpu", "cpu"], "r.png", "d.mp4", "o.mp4", _options())
    assert rec.log[-3:] == [
        ("join", "animate-rank1", 60),
        ("terminate", "animate-rank1"),
        ("join", "animate-rank1", None),
    ]


def test_gpu_devices_use_nccl_and_must_exist(monkeypatch) -> None:
    import torch

    import animate.engines

    reasons = []
    monkeypatch.setattr(
        animate.engines,
        "diffusion_unavailable_reason",
        lambda s, require_gpu=True: reasons.append(require_gpu),
    )
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parallel.check_devices(["0", "1"], SETTINGS, "diffusion") == "nccl"
    assert parallel.check_devices(["1"], SETTINGS, "auto") == "nccl"
    assert reasons == [True, True]  # GPU ranks need the GPU the engine asks for
    with pytest.raises(AnimateError) as err:
        parallel.check_devices(["0", "2", "1", "3"], SETTINGS, "diffusion")
    assert (err.value.code, err.value.message) == ("invalid_option", "no GPU 2, 3 here (2 visible)")


def test_join_sets_the_cuda_device_and_the_groups_timeout(monkeypatch) -> None:
    import torch

    import pipelines.distributed

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
    monkeypatch.setattr(
        pipelines.distributed, "init_tile_group",
        lambda *args, **kwargs: calls.append(("init", args, kwargs)) or "group",
    )  # fmt: skip
    assert parallel._join(1, 2, "3", "file:///tmp/x", "nccl") == "group"
    assert calls == [
        ("set_device", 3),
        ("init", (1, 2, "file:///tmp/x"), {"backend": "nccl", "timeout": timedelta(minutes=10)}),
    ]
    calls.clear()
    assert parallel._join(0, 4, "cpu", "file:///tmp/y", "gloo") == "group"
    assert calls == [("init", (0, 4, "file:///tmp/y"), {"backend": "gloo", "timeout": timedelta(minutes=10)})]


class FakeRank:
    """``Animator`` for ``_rank_main``: ``prepare`` gives an engine whose render yields ``frames`` (then
    raises ``error`` if given) and a bundle that records ``close``."""

    def __init__(self, monkeypatch, frames: int = 3, error: BaseException | None = None) -> None:
        import torch.distributed as dist

        import animate.animator

        self.log: list = []
        rank = self

        def render(bundle):
            assert bundle is rank.bundle  # the prepared guidance, not another
            for i in range(frames):
                rank.log.append(("frame", i))
                yield i
            if error is not None:
                raise error

        class FakeAnimator:
            def __init__(self, settings, tile_group=None) -> None:
                rank.log.append(("animator", settings, tile_group))

            def prepare(self, reference, driving, options):
                rank.log.append(("prepare", reference, driving, options))
                bundle = rank.bundle = SimpleNamespace(close=lambda: rank.log.append(("close",)))
                return SimpleNamespace(engine=SimpleNamespace(render=render), bundle=bundle)

        def join(r, world, device, init, backend):
            rank.log.append(
                ("join-group", r, world, device, init, backend, os.environ.get("CUDA_VISIBLE_DEVICES"))
            )
            return "group"

        monkeypatch.setattr(animate.animator, "Animator", FakeAnimator)
        monkeypatch.setattr(parallel, "_join", join)
        monkeypatch.setattr(dist, "destroy_process_group", lambda: rank.log.append(("leave",)))


def _rank_main(workdir: Path, device: str = "cpu", backend: str = "gloo", options="opts") -> None:
    parallel._rank_main(
        2, 3, device, "file://init", backend, SETTINGS, "r.png", "d.mp4", options, str(workdir)
    )


def test_a_rank_renders_every_frame_then_closes_and_leaves(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    rank = FakeRank(monkeypatch, frames=3)
    _rank_main(tmp_path)
    assert rank.log == [
        ("join-group", 2, 3, "cpu", "file://init", "gloo", ""),  # the GPUs are hidden before the join
        ("animator", SETTINGS, "group"),
        ("prepare", "r.png", "d.mp4", "opts"),
        ("frame", 0), ("frame", 1), ("frame", 2),
        ("close",),
        ("leave",),
    ]  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # nothing written
    # a GPU rank keeps the GPUs visible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    rank = FakeRank(monkeypatch, frames=1)
    _rank_main(tmp_path, device="1", backend="nccl")
    assert rank.log[0] == ("join-group", 2, 3, "1", "file://init", "nccl", "0,1")


def test_a_rank_that_fails_writes_its_error_for_rank_0(monkeypatch, tmp_path) -> None:
    rank = FakeRank(monkeypatch, frames=2, error=AnimateError("out_of_memory", "GPU 1 is full"))
    with pytest.raises(SystemExit) as stop:
        _rank_main(tmp_path)
    assert stop.value.code == 1 and stop.value.__cause__ is None
    assert rank.log[-2:] == [("close",), ("leave",)]  # the bundle is closed and the group left anyway
    data = json.loads((tmp_path / "rank2.error.json").read_text())
    assert data == {"code": "out_of_memory", "message": "GPU 1 is full"}
    # not the user's error: internal_error with its type
    FakeRank(monkeypatch, frames=0, error=KeyError("tile"))
    with pytest.raises(SystemExit):
        _rank_main(tmp_path)
    data = json.loads((tmp_path / "rank2.error.json").read_text())
    assert data == {"code": "internal_error", "message": "KeyError: 'tile'"}
    # the rank's files: only its own error file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank2.error.json"]


def test_a_bundle_without_close_is_fine(monkeypatch, tmp_path) -> None:
    import animate.animator

    rank = FakeRank(monkeypatch, frames=1)

    class NoClose:
        def __init__(self, settings, tile_group=None) -> None:
            pass

        def prepare(self, reference, driving, options):
            rank.log.append(("prepare",))
            return SimpleNamespace(engine=SimpleNamespace(render=lambda bundle: iter([0])), bundle=object())

    monkeypatch.setattr(animate.animator, "Animator", NoClose)
    _rank_main(tmp_path)
    assert rank.log[-2:] == [("prepare",), ("leave",)]
    assert list(tmp_path.iterdir()) == []


def test_hide_gpus_empties_the_visible_list(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    parallel._hide_gpus()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
