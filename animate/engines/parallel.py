"""One job over several GPUs: the tiles of each denoising step split between processes, one per GPU.

``run_split(settings, ["0", "1"], reference, driving, output, options)`` is ``Animator.run`` on two GPUs.
The calling process is rank 0: it runs ``Animator.run`` as usual (progress, cancellation, the output file,
written atomically). Ranks 1..N-1 are spawned processes that prepare the same guidance from the same inputs
and render their share of the tiles; they write nothing. Every step's weighted predictions are summed over
the ranks (``pipelines.distributed.TileGroup``: gloo on CPU, NCCL on CUDA), so every rank takes the same
scheduler step and rank 0's video is the one-GPU video within float tolerance. ``"cpu"`` devices run CPU
processes over gloo (tests, and machines without a GPU).

A rank that fails ends the job: its error (an ``AnimateError``'s code and message) is handed to rank 0,
whose own collective call fails when the peer goes away (gloo at once; NCCL after ``TIMEOUT``). Out of
memory is not retried at a lower plan here: the ranks' steps must stay in lockstep.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from animate.errors import AnimateError
from animate.settings import Settings

log = logging.getLogger("animate.engines.parallel")
TIMEOUT = timedelta(minutes=10)  # one collective call may wait this long for the slowest rank


def check_devices(devices: list[str], settings: Settings, engine: str) -> str:
    """The collective backend for ``devices`` (``gloo`` | ``nccl``), or an ``AnimateError`` saying why not."""
    from animate.engines import diffusion_unavailable_reason

    if engine == "warp":
        raise AnimateError(
            "invalid_option", "--gpus splits the diffusion engine's tiles: not with --engine warp"
        )
    cpu = devices[0] == "cpu"
    reason = diffusion_unavailable_reason(settings, require_gpu=not cpu)
    if reason is not None:
        raise AnimateError(
            "engine_unavailable", f"--gpus needs the diffusion engine, which cannot run: {reason}"
        )
    if not cpu:
        import torch

        count = torch.cuda.device_count()
        missing = [d for d in devices if int(d) >= count]
        if missing:
            raise AnimateError("invalid_option", f"no GPU {', '.join(missing)} here ({count} visible)")
    return "gloo" if cpu else "nccl"


def _join(rank: int, world: int, device: str, init: str, backend: str):
    import torch

    from pipelines.distributed import init_tile_group

    if device != "cpu":
        torch.cuda.set_device(int(device))
    return init_tile_group(rank, world, init, backend=backend, timeout=TIMEOUT)


def _hide_gpus() -> None:
    """CPU ranks must not pick a GPU (the engine takes CUDA when it sees one): before CUDA starts."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def _rank_main(
    rank: int,
    world: int,
    device: str,
    init: str,
    backend: str,
    settings: Settings,
    reference: str,
    driving: str,
    options,
    workdir: str,
) -> None:
    """Ranks 1..N-1: the same guidance, this rank's tiles, nothing written."""
    import torch.distributed as dist

    from animate.animator import Animator

    if device == "cpu":
        _hide_gpus()
    group = _join(rank, world, device, init, backend)
    try:
        prepared = Animator(settings, tile_group=group).prepare(reference, driving, options)
        try:
            for _ in prepared.engine.render(prepared.bundle):
                pass
        finally:
            close = getattr(prepared.bundle, "close", None)
            if close is not None:
                close()
    except BaseException as exc:
        error = (
            exc
            if isinstance(exc, AnimateError)
            else AnimateError("internal_error", f"{type(exc).__name__}: {exc}")
        )
        Path(workdir, f"rank{rank}.error.json").write_text(json.dumps(error.to_dict()))
        log.exception("rank %d failed", rank)
        raise SystemExit(1) from None
    finally:
        dist.destroy_process_group()


def _rank_error(workdir: str, world: int) -> AnimateError | None:
    for rank in range(1, world):
        path = Path(workdir, f"rank{rank}.error.json")
        if path.is_file():
            data = json.loads(path.read_text())
            return AnimateError(data["code"], f"process {rank} of {world}: {data['message']}")
    return None


def run_split(
    settings: Settings,
    devices: list[str],
    reference: str | Path,
    driving: str | Path,
    output: str | Path,
    options=None,
    *,
    artifacts_dir: str | Path | None = None,
    progress: Callable | None = None,
    should_cancel: Callable[[], bool] | None = None,
):
    """``Animator.run`` with the tiles of each step split over ``devices`` (GPU indices, or ``"cpu"``s)."""
    import multiprocessing

    import torch.distributed as dist

    from animate.animator import AnimationOptions, Animator

    options = options or AnimationOptions()
    options.validate()
    backend = check_devices(devices, settings, options.engine)
    world = len(devices)
    context = multiprocessing.get_context("spawn")  # CUDA cannot start in a forked child
    with tempfile.TemporaryDirectory(prefix="animate-split-") as workdir:
        init = f"file://{workdir}/rendezvous"
        args = (settings, str(reference), str(driving), options, workdir)
        children = [
            context.Process(
                target=_rank_main,
                args=(rank, world, devices[rank], init, backend, *args),
                name=f"animate-rank{rank}",
                daemon=True,
            )
            for rank in range(1, world)
        ]
        for child in children:
            child.start()
        ok = False
        try:
            group = _join(0, world, devices[0], init, backend)
            try:
                result = Animator(settings, tile_group=group).run(
                    reference,
                    driving,
                    output,
                    options,
                    artifacts_dir=artifacts_dir,
                    progress=progress,
                    should_cancel=should_cancel,
                )
                ok = True
            except Exception as exc:
                error = _rank_error(workdir, world)
                if error is not None and not isinstance(exc, AnimateError):
                    raise error from exc  # the peer's own reason, not "connection closed"
                raise
            finally:
                dist.destroy_process_group()
        finally:
            for child in children:
                child.join(timeout=60 if ok else 5)
                if child.is_alive():
                    child.terminate()
                    child.join()
    result.notes.append(f"tiles split over {world} processes ({', '.join(devices)})")
    return result
