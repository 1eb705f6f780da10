"""Uploads are probed in a throw-away child process with CPU-time, address-space and wall-time limits.

A crafted file that makes the decoders spin, allocate without bound or crash kills only that child; the
API answers 422 with a stable code and stays up. Children fork from a ``forkserver`` that has already
imported the decoders, so a probe costs a fork, not an interpreter start.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import resource
import signal
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
