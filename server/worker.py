"""What a worker process does: claim a job, call the facade, record the outcome; sweep stale jobs.

One ``Animator`` per process, loaded on the first job and reused. A running job has a heartbeat thread
that also reads the cancel flag; the facade polls ``should_cancel`` between frames and steps.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from huey.consumer import Consumer
from huey.signals import SIGNAL_INTERRUPTED

from animate.animator import AnimationResult, Animator, Canceled, Progress
from animate.errors import AnimateError
from animate.settings import Settings
from server.files import JobFiles, disk_full
from server.models import utcnow
from server.queue import JobQueue
from server.schemas import JobOptions, job_out
from server.store import JobStore
from server.webhooks import deliver_in_background, load_secret

log = logging.getLogger("server.worker")
ORPHAN_CHECK_SECONDS = 600.0


def database_url(settings: Settings) -> str:
    if settings.server.database_url:
        return settings.server.database_url
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(settings.data_dir).resolve() / 'jobs.db'}"


@dataclass
class RunningJob:
    job_id: str
    attempt: int
    lost: bool = False  # the row moved on without us (re-enqueued, deleted): stop, record nothing
    cancel: bool = False  # the user asked to cancel
    interrupted: bool = False  # this worker is shutting down and gave the job back
    done: threading.Event = field(default_factory=threading.Event)
    last_write: float = 0.0
    last_stage: str | None = None

    def should_stop(self) -> bool:
        return self.lost or self.cancel or self.interrupted


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        files: JobFiles,
        queue: JobQueue,
        devices: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self.devices = list(devices or [])  # several: each job's tiles split over them (run_split)
        self.store = store
        self.files = files
        self.queue = queue
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.current: RunningJob | None = None
        self.jobs_done = 0
        self._animator: Animator | None = None
        self._stop = threading.Event()
        self._orphans_checked = float("-inf")

    @property
    def animator(self) -> Animator:
        if self._animator is None:
            self._animator = Animator(self.settings)
        return self._animator

    # --- one job --------------------------------------------------------------------------------

    def run(self, job_id: str) -> None:
        claim = self.store.claim(job_id, self.worker_id)
        if claim is None:
            log.info("job %s is not queued any more; skipped", job_id)
            return
        job, running = claim.job, RunningJob(job_id, claim.attempt)
        self.current = running
        beat = threading.Thread(
            target=self._heartbeat, args=(running,), name=f"heartbeat-{job_id}", daemon=True
        )
        beat.start()
        folder = self.files.attempt_dir(job_id, claim.attempt)
        won = recorded = False  # won: this attempt's output is the job's; recorded: it set the outcome
        log.info(
            "job %s attempt %d started on %s (CUDA_VISIBLE_DEVICES=%s)",
            job_id,
            claim.attempt,
            self.worker_id,
            os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        )
        try:
            options = JobOptions(**job.options).animation_options()
            inputs = self.files.job_dir(job_id)
            result = self._animate(
                inputs / job.reference_name,
                inputs / job.driving_name,
                folder / "video.mp4",
                options,
                artifacts_dir=folder / "artifacts",
                progress=lambda p: self._progress(running, p),
                should_cancel=running.should_stop,
            )
        except Canceled:
            if running.cancel and not (running.lost or running.interrupted):
                recorded = self.store.finish(job_id, claim.attempt, "canceled")
        except Exception as exc:
            if disk_full(exc):
                shutil.rmtree(folder, ignore_errors=True)  # first: recording the outcome needs the space
                self.files.release_reserve()
                log.error("job %s: the disk is full", job_id)
                code, message = "disk_full", "the server ran out of disk space; submit the job again later"
            elif isinstance(exc, AnimateError):
                code, message = exc.code, exc.message[:2000]
            else:
                log.exception("job %s failed", job_id)
                code, message = "internal_error", f"internal error ({type(exc).__name__})"
            recorded = self.store.finish(
                job_id,
                claim.attempt,
                "failed",
                error_code=code,
                error_message=message,
                plan=getattr(exc, "plan", None),  # out_of_memory: the plan that failed
            )
        else:
            won = recorded = self.store.finish(
                job_id,
                claim.attempt,
                "succeeded",
                fraction=1.0,
                stage="encode",
                result=_result_record(result),
                plan=result.plan,
                output_dir=folder.name,
                error_code=None,
                error_message=None,
            )
        finally:
            running.done.set()
            beat.join(timeout=5)
            self.current = None
            self.jobs_done += 1
            if won:  # attempts that died mid-write (a killed worker) left their folders
                self.files.remove_attempts(job_id, keep=folder.name)
            else:
                shutil.rmtree(folder, ignore_errors=True)
            log.info("job %s attempt %d ended (recorded: %s)", job_id, claim.attempt, recorded)
        if job.webhook_url and recorded:
            self._notify(job_id, claim.attempt)

    def _animate(self, *args, **kwargs) -> AnimationResult:
        """``Animator.run``, or over ``self.devices`` (one process per GPU, ``animate.engines.parallel``)."""
        if len(self.devices) > 1:
            from animate import run_split

            return run_split(self.settings, self.devices, *args, **kwargs)
        return self.animator.run(*args, **kwargs)

    def _notify(self, job_id: str, attempt: int) -> None:
        job = self.store.get(job_id)
        if job is None or job.status not in ("succeeded", "failed", "canceled") or not job.webhook_url:
            return
        artifacts = list(self.files.artifacts(job.id, job.output_dir)) if job.output_dir else []
        retention = timedelta(hours=self.settings.server.retention_hours)
        body = job_out(job, None, artifacts, retention).model_dump_json().encode()
        server = self.settings.server
        secret = load_secret(server.webhook_secret, self.settings.data_dir)
        deliver_in_background(
            job.webhook_url, body, f"{job_id}-{attempt}", secret, server.allow_private_webhooks
        )

    def _progress(self, running: RunningJob, p: Progress) -> None:
        now = time.monotonic()
        if p.stage == running.last_stage and now - running.last_write < 0.25 and p.fraction < 1.0:
            return
        running.last_write, running.last_stage = now, p.stage
        if not self.store.progress(running.job_id, running.attempt, p.stage, p.fraction, p.step, p.total):
            running.lost = True

    def _heartbeat(self, running: RunningJob) -> None:
        while not running.done.wait(self.settings.server.heartbeat_seconds):
            try:
                owned, cancel = self.store.heartbeat(running.job_id, running.attempt)
            except Exception as exc:  # the database is briefly away (or its disk full): try again next beat
                if disk_full(exc):
                    log.warning("heartbeat of job %s not written: the disk is full", running.job_id)
                else:
                    log.exception("heartbeat failed")
                continue
            running.lost = running.lost or not owned
            running.cancel = running.cancel or cancel

    def interrupt(self, job_id: str) -> None:
        """Graceful shutdown with a job in flight: hand it back to the queue for another worker."""
        running = self.current
        if running is None or running.job_id != job_id:
            return
        running.interrupted = True
        if self.store.requeue(job_id, running.attempt):
            self.queue.enqueue(job_id)
            log.info("job %s handed back to the queue", job_id)

    # --- periodic sweep -------------------------------------------------------------------------

    def sweep(self) -> None:
        """Heartbeat this worker, re-enqueue jobs of dead workers, delete expired files."""
        server = self.settings.server
        self.files.keep_reserve()
        current = self.current.job_id if self.current else None
        self.store.worker_beat(self.worker_id, socket.gethostname(), os.getpid(), current, self.jobs_done)
        for job_id in self.store.reap_stale(server.stale_after_seconds, server.max_attempts):
            log.warning("job %s lost its worker; re-enqueued", job_id)
            self.queue.enqueue(job_id)
        self.clean_expired()

    def clean_expired(self) -> list[str]:
        """Retention: the uploads and outputs of jobs finished longer ago than ``retention_hours``.

        The row stays (its GET says ``expired: true``; the video answers 410). Queued and running jobs
        are never touched. Folders with no row (an upload cut off by an API crash) go after the same time,
        but never sooner than an hour, so an upload in progress is not taken for one.
        """
        retention = timedelta(hours=self.settings.server.retention_hours)
        cleaned = []
        for job_id in self.store.expired(utcnow() - retention):
            if self.store.mark_files_deleted(job_id):  # first the row, so nothing serves a vanishing file
                self.files.remove(job_id)
                cleaned.append(job_id)
        if cleaned:
            log.info("retention: removed the files of %d job(s)", len(cleaned))
        if time.monotonic() - self._orphans_checked > ORPHAN_CHECK_SECONDS:
            self._orphans_checked = time.monotonic()
            self.clean_orphans(max(retention.total_seconds(), 3600.0))
        return cleaned

    def clean_orphans(self, older_than_seconds: float) -> list[str]:
        """Job folders with no job row whose last change is older than ``older_than_seconds``."""
        cutoff = time.time() - older_than_seconds
        old = {p.name: p for p in self.files.root.iterdir() if p.is_dir() and p.stat().st_mtime < cutoff}
        orphans = sorted(set(old) - self.store.known(list(old))) if old else []
        for name in orphans:
            log.info("removing %s: no job row", old[name])
            shutil.rmtree(old[name], ignore_errors=True)
        return orphans

    def sweep_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception as exc:
                if disk_full(exc):
                    log.warning("sweep skipped: the disk is full")
                else:
                    log.exception("sweep failed")
            self._stop.wait(self.settings.server.maintenance_seconds)

    def stop(self) -> None:
        self._stop.set()
        running = self.current
        if running is not None:
            running.done.wait(timeout=10)
        try:
            self.store.worker_gone(self.worker_id)
        except Exception:
            log.exception("could not remove the worker record")


def _redacted(url: str | None) -> str | None:
    """A queue URL fit for a log line: no password."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def _result_record(result: AnimationResult) -> dict:
    # Local file paths stay on the worker; clients get URLs instead.
    return {k: v for k, v in result.to_dict().items() if k not in ("video", "artifacts", "plan")}


def run_worker(settings: Settings, devices: list[str] | None = None) -> None:
    """One Huey consumer (one job at a time) plus the sweep thread, until SIGINT / SIGTERM. ``devices``:
    each job runs over these GPUs (``animate worker --gpus 0,1 --per-job``)."""
    store = JobStore(database_url(settings))
    files = JobFiles(settings.data_dir)
    runner_box: list[JobRunner] = []
    queue = JobQueue(settings, execute=lambda job_id: runner_box[0].run(job_id))
    runner = JobRunner(settings, store, files, queue, devices)
    runner_box.append(runner)

    @queue.huey.signal(SIGNAL_INTERRUPTED)
    def _interrupted(_signal, task, *args, **kwargs) -> None:
        if task.args:
            runner.interrupt(task.args[0])

    sweeper = threading.Thread(target=runner.sweep_forever, name="sweep", daemon=True)
    sweeper.start()
    consumer = Consumer(
        queue.huey, workers=1, worker_type="thread", periodic=False, initial_delay=0.05, max_delay=0.5
    )
    log.info(
        "worker %s consuming from %s (CUDA_VISIBLE_DEVICES=%s)",
        runner.worker_id,
        _redacted(settings.server.queue_url) or "sqlite",
        os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    )
    try:
        consumer.run()
    finally:
        runner.stop()
        queue.close()
        store.close()
