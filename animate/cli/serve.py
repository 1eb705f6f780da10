"""``animate serve`` (API + embedded workers) and ``animate worker`` (queue consumers, one per GPU)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import typer

from animate.settings import Settings

_PR_SET_PDEATHSIG = 1
# Thread pools of the libraries a job runs through (torch, OpenMP, BLAS, OpenCV).
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")

log = logging.getLogger("animate.serve")


def _child_setup(nice: int) -> None:
    """In the child before exec: die with the parent (even on SIGKILL), then lower the CPU priority."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if nice:
        os.nice(nice)


def _spawn_worker(env: dict[str, str], nice: int = 0) -> subprocess.Popen:
    command = [sys.executable, "-c", "from animate.cli.serve import worker_main; worker_main()"]
    return subprocess.Popen(command, env=env, preexec_fn=lambda: _child_setup(nice))


def _settings(data_dir: Path | None) -> Settings:
    if data_dir is not None:
        os.environ["ANIMATE_DATA_DIR"] = str(data_dir)  # the worker processes read the same settings
    return Settings()


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _embedded_worker_env(threads: int | None) -> dict[str, str]:
    """The API shares the machine with this worker: leave it a core unless told otherwise."""
    threads = threads if threads is not None else max(1, (os.cpu_count() or 1) - 1)
    env = dict(os.environ)
    for name in _THREAD_VARIABLES:
        env.setdefault(name, str(threads))
    return env


def serve(
    host: str | None = typer.Option(None, help="Interface to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default 8000)."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Uploads, outputs, job and queue databases."
    ),
    workers: int = typer.Option(1, min=0, help="Embedded worker processes (0: API only)."),
    worker_nice: int = typer.Option(
        10, min=0, max=19, help="CPU priority drop of the embedded workers, so polls stay fast."
    ),
    worker_threads: int | None = typer.Option(
        None, min=1, help="Compute threads per embedded worker (default: CPU cores - 1)."
    ),
    access_log: bool = typer.Option(False, help="Log every request (costly under heavy polling)."),
) -> None:
    """Run the API and one worker process: SQLite job table and queue, nothing else to start."""
    import uvicorn

    from server import create_app
    from server.protocol import http_protocol

    _logging()
    settings = _settings(data_dir)
    host = host or settings.server.host
    port = port if port is not None else settings.server.port
    env = _embedded_worker_env(worker_threads)
    pool = WorkerPool({f"embedded-{i}": env for i in range(workers)}, nice=worker_nice)
    watcher = threading.Thread(target=pool.watch, name="worker-watch", daemon=True)
    watcher.start()
    try:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level="info",
            access_log=access_log,
            timeout_graceful_shutdown=5,
            backlog=4096,
            http=http_protocol(settings.server),  # header size cap and deadline
        )
    finally:
        pool.stop()


class WorkerPool:
    """One worker process per named environment; one that dies is started again until ``stop``."""

    def __init__(self, envs: dict[str, dict[str, str]], nice: int = 0) -> None:
        self.envs, self.nice = envs, nice
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.children = {name: _spawn_worker(env, nice) for name, env in envs.items()}
        self._started = dict.fromkeys(envs, time.monotonic())

    def check(self) -> None:
        with self._lock:
            for name, child in self.children.items():
                code = child.poll()
                # At most one restart per worker every 5 s: a worker that cannot start does not spin.
                if (
                    code is not None
                    and not self._stopping.is_set()
                    and time.monotonic() - self._started[name] > 5
                ):
                    log.warning("worker %s exited with %s; starting another", name, code)
                    self.children[name] = _spawn_worker(self.envs[name], self.nice)
                    self._started[name] = time.monotonic()

    def watch(self, period: float = 0.5) -> None:
        while not self._stopping.wait(period):
            self.check()

    def stop(self, signum: int = signal.SIGTERM) -> bool:
        """Signal every worker (SIGTERM: a running job goes back to the queue), wait, SIGKILL what outlives
        30 s. True when all ended cleanly (one still starting may die of the signal itself)."""
        with self._lock:
            self._stopping.set()
            children = list(self.children.values())
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)
        codes = []
        for child in children:
            try:
                codes.append(child.wait(timeout=30))
            except subprocess.TimeoutExpired:
                child.kill()
                codes.append(child.wait())
        return all(code in (0, -signum) for code in codes)


def worker(
    gpus: str | None = typer.Option(
        None, help="Comma-separated GPU indices: one worker process per GPU, each seeing only its own."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Same folder as the API's (shared)."),
    per_job: bool = typer.Option(
        False,
        "--per-job",
        help="With --gpus: one worker whose every job spreads over all these GPUs (the tiles of each step "
        "split between them) instead of one worker per GPU. `cpu,cpu` runs CPU processes.",
    ),
) -> None:
    """Consume jobs from the queue, one at a time per process, until SIGTERM or Ctrl-C."""
    from server.worker import run_worker

    _logging()
    settings = _settings(data_dir)
    devices = [g.strip() for g in (gpus or "").split(",") if g.strip()]
    if per_job:
        from animate.cli.plan import parse_gpus

        run_worker(settings, parse_gpus(gpus))
        return
    if not devices:
        run_worker(settings)
        return
    supervise({gpu: dict(os.environ, CUDA_VISIBLE_DEVICES=gpu) for gpu in devices})


def supervise(envs: dict[str, dict[str, str]]) -> None:
    """One worker process per entry, replaced if it dies; SIGTERM/SIGINT stop them all."""
    pool = WorkerPool(envs)
    stopping: list[int] = []

    def stop(signum: int, _frame) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        pool.check()
        time.sleep(0.5)
    if not pool.stop(stopping[0]):
        raise typer.Exit(1)


def worker_main() -> None:
    """Entry point of the worker processes that ``serve`` and ``worker --gpus`` start: only our log lines
    (third-party chatter off unless ``ANIMATE_DEBUG=1``, see ``animate.cli.quiet``)."""
    from animate.cli import quiet

    quiet.install([])
    try:
        typer.run(worker)
    finally:
        quiet.uninstall()
