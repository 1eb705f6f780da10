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


def _runner(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", server={"heartbeat_seconds": 0.05})
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    files = JobFiles(settings.data_dir)
    queue = JobQueue(settings)
    return JobRunner(settings, store, files, queue), store, files, queue


def _queued(store: JobStore, job_id: str) -> None:
    store.create(Job(id=job_id, owner="", reference_name="reference.jpg", driving_name="driving.mp4"))


def test_the_winning_attempt_keeps_its_output_and_dead_attempts_folders_go(tmp_path: Path) -> None:
    from animate.animator import AnimationResult

    runner, store, files, queue = _runner(tmp_path)
    try:
        job_id = "d" * 32
        _queued(store, job_id)
        dead = files.attempt_dir(job_id, 7)  # a killed worker's half-written attempt
        dead.mkdir(parents=True)
        (dead / "video.mp4").write_bytes(b"half")

        class Animator:
            def run(self, reference, driving, output, options, **kwargs):
                output.parent.mkdir(parents=True, exist_ok=True)
                output.write_bytes(b"whole")
                return AnimationResult(video=output, engine="warp", frames=4, fps=24.0, size=(64, 64))

        runner._animator = Animator()
        runner.run(job_id)
        job = store.get(job_id)
        assert (job.status, job.attempts, job.output_dir) == ("succeeded", 1, "attempt-1")
        assert files.video(job_id, "attempt-1").read_bytes() == b"whole"
        assert not dead.exists()
    finally:
        queue.close()
        store.close()


def test_a_job_handed_back_at_shutdown_is_queued_again_and_enqueued(tmp_path: Path) -> None:
    from server.worker import RunningJob

    runner, store, _files, queue = _runner(tmp_path)
    try:
        job_id = "e" * 32
        _queued(store, job_id)
        claim = store.claim(job_id, runner.worker_id)
        runner.current = RunningJob(job_id, claim.attempt)
        assert queue.depth() == 0
        runner.interrupt(job_id)
        assert store.get(job_id).status == "queued" and runner.current.interrupted
        assert queue.depth() == 1  # a message for the next worker, or it would wait for the reaper
        runner.interrupt("other")  # not the job in hand: nothing happens
        assert queue.depth() == 1
    finally:
        queue.close()
        store.close()


def test_an_attempt_that_lost_its_job_records_nothing_and_sends_no_webhook(
    tmp_path: Path, monkeypatch
) -> None:
    """Attempt 1 is given up on (re-queued), attempt 2 runs and succeeds meanwhile; when attempt 1 then
    ends, the job stays attempt 2's success and only attempt 2 may announce it: attempt 1 sends nothing."""
    import server.worker as worker_module
    from animate.animator import AnimationResult

    runner, store, files, queue = _runner(tmp_path)
    sent: list[tuple] = []
    monkeypatch.setattr(worker_module, "deliver_in_background", lambda *args: sent.append(args))
    try:
        job_id = "f" * 32
        store.create(
            Job(
                id=job_id, owner="", reference_name="reference.jpg", driving_name="driving.mp4",
                webhook_url="http://hook.example/x",
            )
        )  # fmt: skip

        class Animator:
            def run(self, reference, driving, output, options, **kwargs):
                assert store.requeue(job_id, 1)  # the reaper gives attempt 1 up
                assert store.claim(job_id, "other-worker").attempt == 2
                assert store.finish(job_id, 2, "succeeded", output_dir="attempt-2")
                output.parent.mkdir(parents=True, exist_ok=True)
                output.write_bytes(b"late")
                return AnimationResult(video=output, engine="warp", frames=4, fps=24.0, size=(64, 64))

        runner._animator = Animator()
        runner.run(job_id)
        job = store.get(job_id)
        assert (job.status, job.attempts, job.output_dir) == ("succeeded", 2, "attempt-2")
        assert sent == []  # attempt 2's worker announces it, not this one
        assert not files.attempt_dir(job_id, 1).exists()  # the loser's output is not kept
    finally:
        queue.close()
        store.close()
