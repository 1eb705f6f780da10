"""Red team (issue 20): the worker's retention sweep, in-process (a real SQLite store and file tree).

A folder under ``jobs/`` with no job row is an upload cut off by a crash, or one still arriving (its row is
written only once the upload is checked). The sweep removes such folders only when they are older than the
retention and never sooner than an hour, so a slow upload is not taken for debris even with a retention of
seconds; folders that have a row are the row's business (``expired``), never the orphan sweep's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from animate.settings import Settings
from server.files import JobFiles
from server.models import Job
from server.queue import JobQueue
from server.store import JobStore
from server.worker import JobRunner


def _folder(files: JobFiles, name: str, age_seconds: float) -> Path:
    folder = files.job_dir(name)
    folder.mkdir(parents=True)
    (folder / "reference.jpg").write_bytes(b"partial")
    then = time.time() - age_seconds
    os.utime(folder, (then, then))
    return folder


def test_orphan_folders_go_after_the_retention_but_never_within_an_hour(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", server={"retention_hours": 4 / 3600})  # 4 seconds
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    files = JobFiles(settings.data_dir)
    queue = JobQueue(settings)
    try:
        runner = JobRunner(settings, store, files, queue)
        uploading = _folder(files, "a" * 32, age_seconds=10 * 60)  # 10 min: far past 4 s, within the hour
        debris = _folder(files, "b" * 32, age_seconds=2 * 3600)
        queued = _folder(files, "c" * 32, age_seconds=2 * 3600)  # old, but its job is still queued
        store.create(Job(id="c" * 32, owner="", reference_name="reference.jpg", driving_name="driving.mp4"))
        assert runner.clean_expired() == []  # no finished job to expire
        assert uploading.is_dir() and queued.is_dir()
        assert not debris.exists()
        assert runner.clean_orphans(5 * 60) == ["a" * 32]  # asked directly with 5 min, it does go
    finally:
        queue.close()
        store.close()
