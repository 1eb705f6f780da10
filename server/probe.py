"""Uploads are probed in a throw-away child process with CPU-time, address-space and wall-time limits.

A crafted file that makes the decoders spin, allocate without bound or crash kills only that child; the
API answers 422 with a stable code and stays up. Children fork from a ``forkserver`` that has already
imported the decoders, so a probe costs a fork, not an interpreter start.

``ProbeSlots`` bounds how many probes run at once, so their memory together stays under
``slots x probe_memory_bytes`` (by default at most half the machine's memory).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.forkserver
import os
import resource
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from animate.errors import AnimateError
from animate.media import load_image, open_video
from animate.settings import MediaLimits

_PRELOAD = ["animate.media", "server.probe"]


@dataclass(frozen=True)
class ProbeLimits:
    timeout_seconds: float
    cpu_seconds: int
    memory_bytes: int


def default_slots(memory_bytes: int) -> int:
    """One probe per core, and all of them together within half of the machine's memory."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cores, memory // (2 * memory_bytes)))


class ProbeBusy(Exception):
    """No probe slot came free in time."""


class ProbeSlots:
    """At most ``size`` probes at once; a caller waits ``wait_seconds`` for a slot, then gets ``ProbeBusy``.

    The wait is on the event loop, so waiting uploads hold no thread that status polls need.
    """

    def __init__(self, size: int, wait_seconds: float) -> None:
        self.size = size
        self.wait_seconds = wait_seconds
        self._free = asyncio.Semaphore(size)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if not self._free.locked():  # a free slot and nobody ahead: taken at once, even with no wait allowed
            await self._free.acquire()
        else:
            try:
                await asyncio.wait_for(self._free.acquire(), self.wait_seconds)
            except TimeoutError:
                raise ProbeBusy(f"all {self.size} upload checks are busy; try again shortly") from None
        try:
            yield
        finally:
            self._free.release()


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _limit_self(limits: ProbeLimits) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    ceiling = _address_space() + limits.memory_bytes  # what the child already maps is not the file's doing
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def probe_inputs(reference: Path, driving: Path, media: MediaLimits) -> None:
    """What the child runs: decode the headers (and the image) under the media limits."""
    load_image(reference, media)
    with open_video(driving, media):
        pass


def _child(conn: Connection, target, args: tuple, limits: ProbeLimits) -> None:
    try:
        _limit_self(limits)
        target(*args)
        conn.send(None)
    except AnimateError as exc:
        conn.send((exc.code, exc.message))
    except MemoryError:
        conn.send(("probe_failed", "reading the file needed more memory than uploads may use"))
    except Exception as exc:
        conn.send(("probe_failed", f"the file could not be read ({type(exc).__name__})"))
    finally:
        conn.close()


def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def warm_up() -> None:
    """Start the fork server now (it imports the decoders, ~1 s), not on the first upload."""
    _context()
    multiprocessing.forkserver.ensure_running()


def run_sandboxed(target, args: tuple, limits: ProbeLimits) -> None:
    """Run ``target(*args)`` in a limited child; its ``AnimateError`` (or the limit it hit) is raised here.

    Blocks the calling thread for at most ``limits.timeout_seconds`` (plus the time to fork).
    """
    context = _context()
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, target, args, limits), daemon=True)
    child.start()
    send.close()
    try:
        answered = receive.poll(limits.timeout_seconds)
        outcome = receive.recv() if answered else "timeout"
    except EOFError:  # the child died before answering: killed by a limit or crashed
        outcome = "died"
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
        child.join(timeout=5)
    if outcome is None:
        return
    if outcome == "timeout":
        raise AnimateError("probe_timeout", f"reading the file took over {limits.timeout_seconds:g} s")
    if outcome == "died":
        if child.exitcode == -signal.SIGXCPU:
            raise AnimateError("probe_timeout", "reading the file used more CPU time than uploads may use")
        raise AnimateError(
            "probe_failed", f"the file could not be read (the reader stopped: {child.exitcode})"
        )
    code, message = outcome
    raise AnimateError(code, message)
