"""``animate serve`` (API + one embedded worker) and ``animate worker`` (queue consumers)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import typer

from animate.settings import Settings

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Children of ``serve`` / ``worker --gpus`` stop when their parent is killed, even by SIGKILL."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn_worker(env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-c", "from animate.cli.serve import worker_main; worker_main()"]
    return subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)


def _settings(data_dir: Path | None) -> Settings:
    if data_dir is not None:
        os.environ["ANIMATE_DATA_DIR"] = str(data_dir)  # the worker processes read the same settings
    return Settings()


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(
    host: str | None = typer.Option(None, help="Interface to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default 8000)."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Uploads, outputs, job and queue databases."
    ),
    workers: int = typer.Option(1, min=0, help="Embedded worker processes (0: API only)."),
) -> None:
    """Run the API and one worker process: SQLite job table and queue, nothing else to start."""
    import uvicorn

    from server import create_app

    _logging()
    settings = _settings(data_dir)
    host = host or settings.server.host
    port = port if port is not None else settings.server.port
    children = [_spawn_worker(dict(os.environ)) for _ in range(workers)]
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        for child in children:
            child.terminate()  # SIGTERM: a running job goes back to the queue
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()


def worker(
    gpus: str | None = typer.Option(None, help="Comma-separated GPU indices: one process per GPU."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Same folder as the API's (shared)."),
) -> None:
    """Consume jobs from the queue, one at a time per process, until SIGTERM or Ctrl-C."""
    from server.worker import run_worker

    _logging()
    settings = _settings(data_dir)
    if not gpus:
        run_worker(settings)
        return
    children = []
    for gpu in (g.strip() for g in gpus.split(",") if g.strip()):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
        children.append(_spawn_worker(env))

    def forward(signum: int, _frame) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    if any(codes):
        raise typer.Exit(1)


def worker_main() -> None:
    """Entry point of the worker processes that ``serve`` and ``worker --gpus`` start."""
    typer.run(worker)
