"""Job records: every state change is one conditional UPDATE, so racing workers and reapers agree.

A worker owns a running job through its attempt number: progress, heartbeat and the final outcome only
land while ``status == 'running' and attempts == attempt``; a re-enqueued or deleted job ignores a
worker that was given up on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from hashlib import sha256

from sqlalchemy import bindparam, case, create_engine, delete, event, func, inspect, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker

from server.models import FINISHED, JOB_STATUSES, Base, Job, WorkerRecord, utcnow


@dataclass(frozen=True)
class Claim:
    job: Job
    attempt: int


class IdempotencyConflict(Exception):
    """Another job already holds this (owner, idempotency key)."""


class QueueFull(Exception):
    """The owner already holds its cap of queued jobs."""


def _position():
    """Queued jobs ahead of ``Job`` (null unless it is queued), as a correlated column."""
    ahead = aliased(Job)
    count = (
        select(func.count())
        .select_from(ahead)
        .where(ahead.status == "queued", ahead.seq < Job.seq)
        .correlate(Job)
        .scalar_subquery()
    )
    return case((Job.status == "queued", count), else_=None).label("queue_position")


class ReadBusy(Exception):
    """An inline read could not get at the SQLite file at once; do it again in a thread."""


def make_engine(url: str, busy_seconds: float = 30.0, pool_size: int = 64) -> Engine:
    if url.startswith("sqlite"):
        # The default pool is above the API's 40 threads: connections are reused, never reopened per poll.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_seconds},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        busy_ms = int(busy_seconds * 1000)

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record) -> None:  # WAL: the API reads while a worker writes
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.close()

        return engine
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def add_missing_columns(engine: Engine) -> None:
    """Add the model's nullable columns a database made by an older release lacks (``ALTER TABLE ... ADD
    COLUMN``, the same on SQLite and PostgreSQL); ``create_all`` only creates missing tables."""
    existing = inspect(engine)
    for table in Base.metadata.sorted_tables:
        have = {column["name"] for column in existing.get_columns(table.name)}
        for column in table.columns:
            if column.name in have or not column.nullable:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as connection:
                connection.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))


class JobStore:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        Base.metadata.create_all(self.engine)
        add_missing_columns(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite in WAL mode: a read takes ~0.1 ms and does not wait on the writer, so the API may run it
        # on the event loop (two thread hand-offs per poll cost more than that when the CPU is busy).
        # Its connections give up after 50 ms instead of waiting, and the caller retries in a thread.
        self.inline_reads = url.startswith("sqlite")
        self._reader = make_engine(url, busy_seconds=0.05, pool_size=2) if self.inline_reads else None
        self._read_sessions = sessionmaker(self._reader, expire_on_commit=False) if self._reader else None
        # Built once: building the correlated position subquery costs more than running it.
        position = _position()
        self._poll = select(Job, position).where(
            Job.id == bindparam("job_id"), Job.owner == bindparam("owner")
        )
        self._list = select(Job, position)

    def close(self) -> None:
        self.engine.dispose()
        if self._reader is not None:
            self._reader.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def ping(self) -> None:
        with self.session() as s:
            s.execute(select(1))

    # --- the API side ---------------------------------------------------------------------------

    def create(self, job: Job, queued_cap: int | None = None) -> Job:
        """Insert ``job``; with ``queued_cap``, only while its owner holds fewer queued jobs than that.

        The count and the insert run under one lock (SQLite's write lock, a PostgreSQL advisory lock
        per owner), so racing submits cannot all see room for themselves.
        """
        try:
            with self.session() as s:
                if queued_cap is not None:
                    self._lock_owner(s, job.owner)
                    queued = s.scalar(
                        select(func.count()).where(Job.owner == job.owner, Job.status == "queued")
                    )
                    if queued >= queued_cap:
                        raise QueueFull(job.owner)
                s.add(job)
        except IntegrityError as exc:
            if job.idempotency_key is not None:
                raise IdempotencyConflict(job.idempotency_key) from exc
            raise
        return job

    def _lock_owner(self, s: Session, owner: str) -> None:
        """Held until the transaction ends."""
        if self.engine.dialect.name == "sqlite":
            s.execute(text("BEGIN IMMEDIATE"))  # the database's one write lock, taken before the count
        elif self.engine.dialect.name == "postgresql":
            key = int.from_bytes(sha256(owner.encode()).digest()[:8], "big", signed=True)
            s.execute(select(func.pg_advisory_xact_lock(key)))
        else:
            raise NotImplementedError(f"no queued-job cap on {self.engine.dialect.name}")

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        with self.session() as s:
            query = select(Job).where(Job.id == job_id)
            if owner is not None:
                query = query.where(Job.owner == owner)
            return s.scalars(query).first()

    def get_with_position(self, job_id: str, owner: str) -> tuple[Job, int | None] | None:
        """The job and its queue position in one read (what a status poll needs, nothing more)."""
        with self.session() as s:
            row = s.execute(self._poll, {"job_id": job_id, "owner": owner}).first()
        return (row[0], row[1]) if row is not None else None

    def poll_inline(self, job_id: str, owner: str) -> tuple[Job, int | None] | None:
        """``get_with_position`` that never waits: raises ``ReadBusy`` instead (SQLite only)."""
        if self._read_sessions is None:
            raise ReadBusy("inline reads are for SQLite")
        try:
            with self._read_sessions() as s:
                row = s.execute(self._poll, {"job_id": job_id, "owner": owner}).first()
        except OperationalError as exc:
            raise ReadBusy(str(exc)) from exc
        return (row[0], row[1]) if row is not None else None

    def find_idempotent(self, owner: str, key: str) -> Job | None:
        with self.session() as s:
            return s.scalars(select(Job).where(Job.owner == owner, Job.idempotency_key == key)).first()

    def list(
        self, owner: str, status: str | None, before_seq: int | None, limit: int
    ) -> list[tuple[Job, int | None]]:
        """Newest first, each with its queue position."""
        with self.session() as s:
            query = self._list.where(Job.owner == owner)
            if status is not None:
                query = query.where(Job.status == status)
            if before_seq is not None:
                query = query.where(Job.seq < before_seq)
            return [
                (job, position) for job, position in s.execute(query.order_by(Job.seq.desc()).limit(limit))
            ]

    def queue_position(self, job: Job) -> int | None:
        """0: next to run. Counted over every owner's jobs: they share the workers."""
        if job.status != "queued":
            return None
        with self.session() as s:
            return s.scalar(select(func.count()).where(Job.status == "queued", Job.seq < job.seq)) or 0

    def count_queued(self, owner: str) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).where(Job.owner == owner, Job.status == "queued")) or 0

    def cancel(self, job_id: str) -> Job | None:
        """A queued job is canceled at once; a running one gets the flag its worker polls."""
        now = utcnow()
        with self.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(status="canceled", finished_at=now, cancel_requested=True)
            )
            s.execute(
                update(Job).where(Job.id == job_id, Job.status == "running").values(cancel_requested=True)
            )
        return self.get(job_id)

    def finish_unqueued(self, job_id: str, code: str) -> None:
        """A job whose message never reached the queue."""
        with self.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(status="failed", finished_at=utcnow(), error_code=code, error_message="not queued")
            )

    def delete(self, job_id: str) -> bool:
        with self.session() as s:
            return s.execute(delete(Job).where(Job.id == job_id, Job.status.in_(FINISHED))).rowcount == 1

    # --- the worker side ------------------------------------------------------------------------

    def claim(self, job_id: str, worker_id: str) -> Claim | None:
        """queued -> running for exactly one caller; ``None`` when canceled, gone or already taken."""
        now = utcnow()
        with self.session() as s:
            done = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(
                    status="running",
                    attempts=Job.attempts + 1,
                    started_at=now,
                    heartbeat_at=now,
                    worker_id=worker_id,
                    stage=None,
                    fraction=0.0,
                    step=0,
                    total=0,
                )
            )
            if done.rowcount != 1:
                return None
            job = s.scalars(select(Job).where(Job.id == job_id)).one()
            return Claim(job, job.attempts)

    def _owned(self, job_id: str, attempt: int):
        return update(Job).where(Job.id == job_id, Job.status == "running", Job.attempts == attempt)

    def heartbeat(self, job_id: str, attempt: int) -> tuple[bool, bool]:
        """(still ours, cancel requested)."""
        with self.session() as s:
            owned = s.execute(self._owned(job_id, attempt).values(heartbeat_at=utcnow())).rowcount == 1
            cancel = bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
        return owned, cancel

    def progress(self, job_id: str, attempt: int, stage: str, fraction: float, step: int, total: int) -> bool:
        with self.session() as s:
            values = dict(stage=stage, fraction=fraction, step=step, total=total, heartbeat_at=utcnow())
            return s.execute(self._owned(job_id, attempt).values(**values)).rowcount == 1

    def finish(self, job_id: str, attempt: int, status: str, **values) -> bool:
        assert status in FINISHED
        with self.session() as s:
            owned = self._owned(job_id, attempt).values(status=status, finished_at=utcnow(), **values)
            return s.execute(owned).rowcount == 1

    def requeue(self, job_id: str, attempt: int) -> bool:
        """Give a running job back to the queue (graceful worker shutdown)."""
        with self.session() as s:
            values = dict(status="queued", worker_id=None, heartbeat_at=None)
            return s.execute(self._owned(job_id, attempt).values(**values)).rowcount == 1

    def reap_stale(self, stale_after: float, max_attempts: int) -> list[str]:
        """Running jobs whose heartbeat stopped: back to ``queued`` (returned, to enqueue) or failed."""
        cutoff = utcnow() - timedelta(seconds=stale_after)
        requeued = []
        with self.session() as s:
            stale = s.execute(
                select(Job.id, Job.attempts, Job.heartbeat_at, Job.cancel_requested).where(
                    Job.status == "running", Job.heartbeat_at < cutoff
                )
            ).all()
        for job_id, attempts, beat, cancel in stale:
            same = update(Job).where(Job.id == job_id, Job.status == "running", Job.heartbeat_at == beat)
            if cancel:
                values = dict(status="canceled", finished_at=utcnow())
            elif attempts >= max_attempts:
                values = dict(
                    status="failed",
                    finished_at=utcnow(),
                    error_code="worker_lost",
                    error_message=f"the worker running this job stopped responding {attempts} times",
                )
            else:
                values = dict(status="queued", worker_id=None, heartbeat_at=None)
            with self.session() as s:
                if s.execute(same.values(**values)).rowcount == 1 and values["status"] == "queued":
                    requeued.append(job_id)
        return requeued

    def expired(self, older_than: datetime, limit: int = 100) -> list[str]:
        """Finished jobs whose files are still on disk and whose end is before ``older_than``."""
        with self.session() as s:
            return list(
                s.scalars(
                    select(Job.id)
                    .where(
                        Job.status.in_(FINISHED), Job.finished_at < older_than, Job.files_deleted.is_(False)
                    )
                    .order_by(Job.seq)
                    .limit(limit)
                )
            )

    def mark_files_deleted(self, job_id: str) -> bool:
        """Only a finished job's files are ever given up (a re-queued job still needs its inputs)."""
        with self.session() as s:
            done = s.execute(
                update(Job).where(Job.id == job_id, Job.status.in_(FINISHED)).values(files_deleted=True)
            )
            return done.rowcount == 1

    def known(self, job_ids: list[str]) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(Job.id).where(Job.id.in_(job_ids))))

    # --- workers and metrics --------------------------------------------------------------------

    def worker_beat(
        self, worker_id: str, hostname: str, pid: int, current_job: str | None, done: int
    ) -> None:
        with self.session() as s:
            record = s.get(WorkerRecord, worker_id)
            if record is None:
                record = WorkerRecord(id=worker_id, hostname=hostname, pid=pid, started_at=utcnow())
                s.add(record)
            record.heartbeat_at = utcnow()
            record.current_job = current_job
            record.jobs_done = done

    def worker_gone(self, worker_id: str) -> None:
        with self.session() as s:
            s.execute(delete(WorkerRecord).where(WorkerRecord.id == worker_id))

    def workers(self) -> list[WorkerRecord]:
        with self.session() as s:
            return list(s.scalars(select(WorkerRecord).order_by(WorkerRecord.started_at)))

    def counts_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(JOB_STATUSES, 0)
        with self.session() as s:
            for status, count in s.execute(select(Job.status, func.count()).group_by(Job.status)):
                counts[status] = count
        return counts

    def finished_durations(self) -> list[tuple[str, float, dict]]:
        """(status, run seconds, stage timings) of every finished job that ran."""
        with self.session() as s:
            rows = s.execute(
                select(Job.status, Job.started_at, Job.finished_at, Job.result).where(
                    Job.status.in_(FINISHED), Job.started_at.is_not(None), Job.finished_at.is_not(None)
                )
            ).all()
        return [
            (status, (end - start).total_seconds(), (result or {}).get("timings", {}))
            for status, start, end, result in rows
        ]
