"""The Huey queue: ``SqliteHuey`` in the data folder by default, Redis or PostgreSQL by URL.

The queue only carries job ids. The job table is the truth: Huey does not acknowledge, so a message lost
with a killed worker is recovered by the stale-heartbeat sweep in ``server.worker``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from huey import Huey, PostgresHuey, RedisHuey, SqliteHuey

from animate.settings import Settings


def make_huey(settings: Settings) -> Huey:
    url = settings.server.queue_url
    name = settings.server.queue_name
    if url is None:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        return SqliteHuey(name, filename=str(Path(settings.data_dir) / "queue.db"), results=False)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisHuey(name, url=url, results=False)
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        # Tables huey_task / huey_schedule / ... in that database; workers take jobs with SKIP LOCKED.
        return PostgresHuey(name, dsn=url.replace("postgresql+psycopg://", "postgresql://", 1), results=False)
    if url.startswith("sqlite:///"):
        return SqliteHuey(name, filename=url.removeprefix("sqlite:///"), results=False)
    raise ValueError(f"unsupported queue URL: {url!r} (redis://, postgresql:// or sqlite:///)")


class JobQueue:
    """One task, ``run_job(job_id)``; ``execute`` is what a worker process does with it."""

    def __init__(self, settings: Settings, execute: Callable[[str], None] | None = None) -> None:
        self.huey = make_huey(settings)
        self._execute = execute

        @self.huey.task(name="run_job")
        def run_job(job_id: str) -> None:
            if self._execute is None:
                raise RuntimeError("this process only enqueues jobs")
            self._execute(job_id)

        self._run_job = run_job

    def enqueue(self, job_id: str) -> None:
        self._run_job(job_id)

    def depth(self) -> int:
        return self.huey.pending_count()

    def close(self) -> None:
        close = getattr(self.huey.storage, "close", None)
        if close is not None:
            close()
