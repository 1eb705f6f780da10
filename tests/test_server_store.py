"""JobStore in-process against a fresh SQLite file (and the real PostgreSQL where it differs): every query's
owner filter, state guard and ordering, checked against jobs built by hand.

Fast (no app, no worker): the store's mutation run collects this file (see benchmarks/MUTATION.md).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import timedelta
from hashlib import sha256
from pathlib import Path

import pytest
from sqlalchemy import text

from server.models import Job, utcnow
from server.store import IdempotencyConflict, JobStore, QueueFull, ReadBusy, make_engine

A, B = "a" * 32, "b" * 32  # two owners (API key digests)


def job(job_id: str, owner: str = A, key: str | None = None, **values) -> Job:
    return Job(
        id=job_id, owner=owner, reference_name="reference.jpg", driving_name="driving.mp4",
        idempotency_key=key, **values,
    )  # fmt: skip


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield s
    s.close()


@pytest.fixture()
def pg_url() -> Iterator[str]:
    from tests.test_server_distributed import PG_HOST, PG_PORT, _require

    _require("PostgreSQL", PG_PORT)
    import psycopg

    name = f"animate_store_{uuid.uuid4().hex[:10]}"
    admin = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def statuses(store: JobStore) -> dict[str, str]:
    with store.session() as s:
        return {j.id: j.status for j in s.query(Job)}


# --- the API side: owners never see each other's jobs ---------------------------------------------------


def test_get_and_poll_only_answer_the_owner(store: JobStore) -> None:
    store.create(job("j1", A))
    assert store.get("j1").owner == A  # no owner given: the worker's view
    assert store.get("j1", A).id == "j1"
    assert store.get("j1", B) is None
    assert store.get("nope") is None
    assert store.get_with_position("j1", B) is None
    found, position = store.get_with_position("j1", A)
    assert found.id == "j1" and position == 0
    assert store.poll_inline("j1", B) is None
    found, position = store.poll_inline("j1", A)
    assert found.id == "j1" and position == 0


def test_idempotency_keys_belong_to_their_owner(store: JobStore) -> None:
    """One key's Idempotency-Key never finds another key's job, and both may use the same key text."""
    store.create(job("ja", A, key="same"))
    assert store.find_idempotent(B, "same") is None
    store.create(job("jb", B, key="same"))  # no conflict: another owner
    assert store.find_idempotent(A, "same").id == "ja"
    assert store.find_idempotent(B, "same").id == "jb"
    assert store.find_idempotent(A, "other") is None
    with pytest.raises(IdempotencyConflict):
        store.create(job("ja2", A, key="same"))
    assert store.get("ja2") is None


def test_a_duplicate_id_without_idempotency_key_is_not_called_a_conflict(store: JobStore) -> None:
    from sqlalchemy.exc import IntegrityError

    store.create(job("j1"))
    with pytest.raises(IntegrityError) as caught:
        store.create(job("j1"))
    assert not isinstance(caught.value, IdempotencyConflict)


def test_queued_cap_counts_only_the_owners_queued_jobs(store: JobStore) -> None:
    store.create(job("a1", A), queued_cap=2)
    store.create(job("b1", B), queued_cap=2)
    store.create(job("b2", B), queued_cap=2)
    store.create(job("a2", A), queued_cap=2)  # B's two queued jobs do not count against A
    with pytest.raises(QueueFull):
        store.create(job("a3", A), queued_cap=2)
    assert store.get("a3") is None
    store.claim("a1", "w")  # running jobs do not count
    store.create(job("a3", A), queued_cap=2)
    assert store.count_queued(A) == 2 and store.count_queued(B) == 2
    store.create(job("a4", A))  # no cap given: no limit
    assert store.count_queued(A) == 3
    assert store.count_queued("nobody") == 0


def test_queued_cap_on_postgresql_uses_the_owners_lock(pg_url: str) -> None:
    store = JobStore(pg_url)
    try:
        store.create(job("a1", A), queued_cap=1)
        store.create(job("b1", B), queued_cap=1)
        with pytest.raises(QueueFull):
            store.create(job("a2", A), queued_cap=1)
        with store.session() as s:  # the advisory lock is per owner: another session may take B's
            store._lock_owner(s, B)
            key = int.from_bytes(sha256(B.encode()).digest()[:8], "big", signed=True)
            held = s.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :lo"),
                {"lo": key & 0xFFFFFFFF},
            ).scalar()
            assert held == 1
        assert store.inline_reads is False
        with pytest.raises(ReadBusy, match="inline reads are for SQLite"):
            store.poll_inline("a1", A)
        found, position = store.get_with_position("b1", B)
        assert found.id == "b1" and position == 1  # a1 is ahead of it
    finally:
        store.close()


def test_queued_cap_refuses_an_unknown_dialect(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        store.engine.dialect.name = "oracle"
        with store.session() as s, pytest.raises(NotImplementedError):
            store._lock_owner(s, A)
    finally:
        store.close()


def test_list_is_the_owners_jobs_newest_first_with_status_and_cursor(store: JobStore) -> None:
    for i in range(5):
        store.create(job(f"a{i}", A))
        store.create(job(f"b{i}", B))
    store.claim("a3", "w")
    listed = store.list(A, None, None, 10)
    assert [j.id for j, _ in listed] == ["a4", "a3", "a2", "a1", "a0"]
    # queued positions count every owner's queued jobs ahead (a3 is running)
    assert [p for _, p in listed] == [7, None, 4, 2, 0]
    assert [j.id for j, _ in store.list(A, None, None, 2)] == ["a4", "a3"]
    cursor = store.get("a2").seq
    assert [j.id for j, _ in store.list(A, None, cursor, 10)] == ["a1", "a0"]
    assert [j.id for j, _ in store.list(A, "running", None, 10)] == ["a3"]
    assert [j.id for j, _ in store.list(A, "queued", cursor, 1)] == ["a1"]
    assert store.list("nobody", None, None, 10) == []


def test_queue_position_counts_queued_jobs_of_every_owner_ahead(store: JobStore) -> None:
    for name, owner in [("a0", A), ("b0", B), ("a1", A), ("b1", B)]:
        store.create(job(name, owner))
    assert [store.queue_position(store.get(n)) for n in ("a0", "b0", "a1", "b1")] == [0, 1, 2, 3]
    store.claim("b0", "w")
    assert store.queue_position(store.get("b0")) is None
    assert store.queue_position(store.get("b1")) == 2
    assert store.get_with_position("b1", B)[1] == 2
    assert store.get_with_position("b0", B)[1] is None


def test_cancel_a_queued_job_at_once_and_flag_a_running_one(store: JobStore) -> None:
    store.create(job("q"))
    store.create(job("r"))
    store.create(job("other"))
    store.claim("r", "w")
    canceled = store.cancel("q")
    assert canceled.status == "canceled" and canceled.cancel_requested and canceled.finished_at is not None
    running = store.cancel("r")
    assert running.status == "running" and running.cancel_requested and running.finished_at is None
    assert store.heartbeat("r", 1) == (True, True)
    other = store.get("other")
    assert other.status == "queued" and not other.cancel_requested
    store.finish("r", 1, "succeeded")
    done = store.cancel("r")  # a finished job stays as it is
    assert done.status == "succeeded"
    assert store.cancel("missing") is None


def test_finish_unqueued_fails_only_a_queued_job(store: JobStore) -> None:
    store.create(job("q"))
    store.create(job("r"))
    store.claim("r", "w")
    store.finish_unqueued("q", "queue_unavailable")
    store.finish_unqueued("r", "queue_unavailable")
    q = store.get("q")
    assert (q.status, q.error_code, q.error_message) == ("failed", "queue_unavailable", "not queued")
    assert q.finished_at is not None
    assert store.get("r").status == "running" and store.get("r").error_code is None


def test_delete_only_finished_jobs(store: JobStore) -> None:
    for name in ("q", "r", "s", "f", "c"):
        store.create(job(name))
    for name in ("r", "s", "f"):
        store.claim(name, "w")
    store.finish("s", 1, "succeeded")
    store.finish("f", 1, "failed", error_code="x")
    store.cancel("c")
    assert [store.delete(n) for n in ("q", "r", "s", "f", "c", "missing")] == [
        False, False, True, True, True, False,
    ]  # fmt: skip
    assert set(statuses(store)) == {"q", "r"}


# --- the worker side: one owner of a running job, through its attempt ------------------------------------


def test_claim_is_for_exactly_one_worker_and_resets_progress(store: JobStore) -> None:
    store.create(job("j", stage="render", fraction=0.5, step=3, total=9))
    claim = store.claim("j", "w1")
    assert claim.attempt == 1 and claim.job.attempts == 1
    j = claim.job
    assert (j.status, j.worker_id, j.stage, j.fraction, j.step, j.total) == ("running", "w1", None, 0.0, 0, 0)
    assert j.started_at is not None and j.heartbeat_at == j.started_at
    assert store.claim("j", "w2") is None
    assert store.get("j").worker_id == "w1"
    assert store.claim("missing", "w") is None
    store.create(job("c"))
    store.cancel("c")
    assert store.claim("c", "w") is None


def test_a_stale_attempt_can_no_longer_write(store: JobStore) -> None:
    store.create(job("j"))
    store.claim("j", "w1")
    assert store.requeue("j", 1) is True
    queued = store.get("j")
    assert (queued.status, queued.worker_id, queued.heartbeat_at) == ("queued", None, None)
    assert store.requeue("j", 1) is False  # no longer running
    assert store.claim("j", "w2").attempt == 2
    # attempt 1's worker is out: nothing it sends lands
    assert store.heartbeat("j", 1) == (False, False)
    assert store.progress("j", 1, "render", 0.5, 1, 2) is False
    assert store.finish("j", 1, "succeeded") is False
    assert store.requeue("j", 1) is False
    assert store.get("j").status == "running" and store.get("j").stage is None
    # attempt 2 writes
    before = store.get("j").heartbeat_at
    assert store.progress("j", 2, "render", 0.25, 1, 4) is True
    j = store.get("j")
    assert (j.stage, j.fraction, j.step, j.total) == ("render", 0.25, 1, 4) and j.heartbeat_at >= before
    assert store.heartbeat("j", 2) == (True, False)
    assert store.finish("j", 2, "failed", error_code="boom", error_message="it broke") is True
    j = store.get("j")
    assert (j.status, j.error_code, j.error_message) == ("failed", "boom", "it broke")
    assert j.finished_at is not None
    assert store.finish("j", 2, "succeeded") is False  # finished once
    assert store.heartbeat("j", 2) == (False, False)
    with pytest.raises(AssertionError):
        store.finish("j", 2, "running")


def test_reap_stale_requeues_fails_or_cancels_by_attempts_and_flag(store: JobStore) -> None:
    for name in ("fresh", "retry", "lost", "cancel", "queued"):
        store.create(job(name))
    for name in ("fresh", "retry", "lost", "cancel"):
        store.claim(name, "w")
    store.cancel("cancel")
    old = utcnow() - timedelta(seconds=100)
    with store.session() as s:
        for j in s.query(Job).filter(Job.id.in_(["retry", "lost", "cancel"])):
            j.heartbeat_at = old
        s.query(Job).filter(Job.id == "lost").one().attempts = 3
        s.query(Job).filter(Job.id == "retry").one().attempts = 2
    assert store.reap_stale(stale_after=50, max_attempts=3) == ["retry"]
    got = {n: store.get(n) for n in ("fresh", "retry", "lost", "cancel", "queued")}
    assert got["fresh"].status == "running"
    assert (got["retry"].status, got["retry"].worker_id, got["retry"].heartbeat_at) == ("queued", None, None)
    assert got["lost"].status == "failed" and got["lost"].error_code == "worker_lost"
    assert got["lost"].error_message == "the worker running this job stopped responding 3 times"
    assert got["lost"].finished_at is not None
    assert got["cancel"].status == "canceled" and got["cancel"].finished_at is not None
    assert got["queued"].status == "queued"
    # a heartbeat 100 s old is not stale after 200 s
    with store.session() as s:
        s.query(Job).filter(Job.id == "fresh").one().heartbeat_at = old
    assert store.reap_stale(stale_after=200, max_attempts=3) == []
    assert store.get("fresh").status == "running"
    assert store.reap_stale(stale_after=50, max_attempts=2) == ["fresh"]  # 1 attempt of 2: once more
    assert store.get("fresh").status == "queued"


def test_reap_stale_fails_at_exactly_max_attempts(store: JobStore) -> None:
    store.create(job("j"))
    store.claim("j", "w")
    with store.session() as s:
        s.query(Job).filter(Job.id == "j").one().heartbeat_at = utcnow() - timedelta(seconds=10)
    assert store.reap_stale(stale_after=5, max_attempts=1) == []
    assert store.get("j").status == "failed"


def test_expired_and_files_deleted_only_for_finished_jobs(store: JobStore) -> None:
    for name in ("old1", "old2", "old3", "new", "running", "queued"):
        store.create(job(name))
    for name in ("old1", "old2", "old3", "new", "running"):
        store.claim(name, "w")
    for name in ("old1", "old2", "old3", "new"):
        store.finish(name, 1, "succeeded")
    with store.session() as s:
        for j in s.query(Job).filter(Job.id.in_(["old1", "old2", "old3"])):
            j.finished_at = utcnow() - timedelta(hours=2)
    cutoff = utcnow() - timedelta(hours=1)
    assert store.expired(cutoff) == ["old1", "old2", "old3"]
    assert store.expired(cutoff, limit=2) == ["old1", "old2"]
    assert store.mark_files_deleted("old1") is True
    assert store.mark_files_deleted("running") is False
    assert store.mark_files_deleted("queued") is False
    assert store.get("running").files_deleted is False
    assert store.expired(cutoff) == ["old2", "old3"]
    assert store.expired(utcnow() + timedelta(seconds=5)) == ["old2", "old3", "new"]


def test_known_workers_counts_and_durations(store: JobStore) -> None:
    for name in ("s", "f", "q", "r"):
        store.create(job(name))
    for name in ("s", "f", "r"):
        store.claim(name, "w")
    store.finish("s", 1, "succeeded", result={"timings": {"render": 1.5}})
    store.finish("f", 1, "failed")
    store.cancel("q")  # canceled without ever starting: no duration
    assert store.known(["s", "q", "missing"]) == {"s", "q"}
    assert store.counts_by_status() == {"queued": 0, "running": 1, "succeeded": 1, "failed": 1, "canceled": 1}
    start = utcnow() - timedelta(seconds=30)
    with store.session() as s:
        for j in s.query(Job).filter(Job.id.in_(["s", "f"])):
            j.started_at, j.finished_at = start, start + timedelta(seconds=12 if j.id == "s" else 4)
    durations = sorted(store.finished_durations())
    assert durations == [("failed", 4.0, {}), ("succeeded", 12.0, {"render": 1.5})]

    store.worker_beat("w2", "host-b", 22, None, 0)
    store.worker_beat("w1", "host-a", 11, "r", 3)
    store.worker_beat("w2", "host-b", 22, "s", 5)  # the same worker again: updated, not added
    workers = store.workers()
    assert [(w.id, w.hostname, w.pid, w.current_job, w.jobs_done) for w in workers] == [
        ("w2", "host-b", 22, "s", 5), ("w1", "host-a", 11, "r", 3),
    ]  # fmt: skip
    assert workers[0].heartbeat_at >= workers[0].started_at
    store.worker_gone("w2")
    assert [w.id for w in store.workers()] == ["w1"]
    store.ping()


# --- engines and old databases ------------------------------------------------------------------------


def test_sqlite_connections_use_wal_and_the_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}", busy_seconds=2.5, pool_size=3)
    try:
        with engine.connect() as c:
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert c.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
            assert c.execute(text("PRAGMA busy_timeout")).scalar() == 2500
        assert engine.pool.size() == 3 and engine.pool._max_overflow == 3
    finally:
        engine.dispose()


def test_postgres_urls_use_psycopg(pg_url: str) -> None:
    for url in (pg_url, pg_url.replace("postgresql://", "postgres://")):
        engine = make_engine(url)
        try:
            assert engine.url.drivername == "postgresql+psycopg"
            with engine.connect() as c:
                assert c.execute(text("SELECT 1")).scalar() == 1
        finally:
            engine.dispose()


def test_an_older_database_gains_the_new_nullable_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    JobStore(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE jobs DROP COLUMN inputs")
        conn.execute("ALTER TABLE jobs DROP COLUMN webhook_url")
    store = JobStore(f"sqlite:///{path}")
    try:
        store.create(job("j", inputs={"reference": "me.jpg"}, webhook_url="https://example.com/h"))
        j = store.get("j")
        assert j.inputs == {"reference": "me.jpg"} and j.webhook_url == "https://example.com/h"
        with sqlite3.connect(path) as conn:
            columns = {row[1]: row[2] for row in conn.execute("PRAGMA table_info(jobs)")}
        assert columns["webhook_url"] == "TEXT" and columns["inputs"] == "JSON"
    finally:
        store.close()


# --- guards against rows a race or an older release may leave ------------------------------------------


def test_cancel_flags_neither_finished_nor_other_jobs(store: JobStore) -> None:
    store.create(job("done"))
    store.create(job("run"))
    store.claim("done", "w")
    store.claim("run", "w")
    store.finish("done", 1, "succeeded")
    store.cancel("done")
    assert store.get("done").cancel_requested is False
    assert store.get("run").cancel_requested is False
    assert store.heartbeat("run", 1) == (True, False)  # another job's flag is not ours
    store.cancel("run")
    assert store.heartbeat("done", 1) == (False, False)


def test_finish_unqueued_leaves_other_queued_jobs(store: JobStore) -> None:
    store.create(job("q1"))
    store.create(job("q2"))
    store.finish_unqueued("q1", "queue_unavailable")
    assert statuses(store) == {"q1": "failed", "q2": "queued"}


def test_heartbeat_and_progress_move_the_heartbeat(store: JobStore) -> None:
    store.create(job("j"))
    store.claim("j", "w")
    old = utcnow() - timedelta(hours=1)
    for write in (lambda: store.heartbeat("j", 1), lambda: store.progress("j", 1, "render", 0.1, 1, 10)):
        with store.session() as s:
            s.query(Job).filter(Job.id == "j").one().heartbeat_at = old
        write()
        assert utcnow() - store.get("j").heartbeat_at < timedelta(minutes=5)


def test_reap_stale_cutoff_is_strict(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.store as store_module

    now = utcnow()
    monkeypatch.setattr(store_module, "utcnow", lambda: now)
    store.create(job("edge"))
    store.create(job("older"))
    store.claim("edge", "w")
    store.claim("older", "w")
    with store.session() as s:
        s.query(Job).filter(Job.id == "edge").one().heartbeat_at = now - timedelta(seconds=30)
        s.query(Job).filter(Job.id == "older").one().heartbeat_at = now - timedelta(
            seconds=30, microseconds=1
        )
    assert store.reap_stale(stale_after=30, max_attempts=5) == ["older"]
    assert store.get("edge").status == "running"


class RacingStore(JobStore):
    """Runs ``between`` once, right after the reaper's first read (the stale list) and before its updates."""

    between = None

    def session(self):
        context = super().session()
        store = self

        class Wrapped:
            def __enter__(self):
                return context.__enter__()

            def __exit__(self, *exc):
                result = context.__exit__(*exc)
                if store.between is not None:
                    action, store.between = store.between, None
                    action()
                return result

        return Wrapped()


def test_the_reaper_spares_a_job_that_beat_or_finished_meanwhile(tmp_path: Path) -> None:
    store = RacingStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        for name in ("beat", "done"):
            store.create(job(name))
            store.claim(name, "w")
        with store.session() as s:
            for j in s.query(Job):
                j.heartbeat_at = utcnow() - timedelta(seconds=100)

        def meanwhile() -> None:
            assert store.heartbeat("beat", 1) == (True, False)  # the worker is alive after all
            assert store.finish("done", 1, "succeeded")

        store.between = meanwhile
        assert store.reap_stale(stale_after=50, max_attempts=5) == []
        assert statuses(store) == {"beat": "running", "done": "succeeded"}
        assert store.get("beat").worker_id == "w"
    finally:
        store.close()


def test_expiry_and_durations_only_read_finished_rows(store: JobStore) -> None:
    """A running row with a stale finished_at (left by an older release, say) is never expired or timed."""
    past = utcnow() - timedelta(hours=3)
    store.create(job("run"))
    store.claim("run", "w")
    store.create(job("ok"))
    store.claim("ok", "w")
    store.finish("ok", 1, "succeeded")
    store.create(job("never"))
    store.cancel("never")  # finished, never started
    with store.session() as s:
        for j in s.query(Job):
            j.finished_at = past if j.id != "never" else None
            j.started_at = past - timedelta(seconds=5)
    assert store.expired(utcnow()) == ["ok"]
    assert store.finished_durations() == [("succeeded", 5.0, {})]


def test_expired_cutoff_is_strict_and_ordered_by_submission(store: JobStore) -> None:
    at = utcnow() - timedelta(hours=2)
    for name in ("first", "second", "third"):
        store.create(job(name))
        store.claim(name, "w")
        store.finish(name, 1, "succeeded")
    with store.session() as s:
        rows = {j.id: j for j in s.query(Job)}
        rows["first"].finished_at = at - timedelta(seconds=1)
        rows["second"].finished_at = at - timedelta(seconds=3)  # ended first, submitted second
        rows["third"].finished_at = at
    assert store.expired(at) == ["first", "second"]


def test_workers_are_listed_by_start(store: JobStore) -> None:
    store.worker_beat("late", "h", 1, None, 0)
    store.worker_beat("early", "h", 2, None, 0)
    with store.session() as s:
        from server.models import WorkerRecord

        s.get(WorkerRecord, "early").started_at = utcnow() - timedelta(hours=1)
    assert [w.id for w in store.workers()] == ["early", "late"]


def test_errors_carry_what_they_are_about(store: JobStore) -> None:
    store.create(job("a", A, key="k1"), queued_cap=1)
    with pytest.raises(QueueFull) as full:
        store.create(job("b", A), queued_cap=1)
    assert full.value.args == (A,)
    with pytest.raises(IdempotencyConflict) as conflict:
        store.create(job("c", A, key="k1"))
    assert conflict.value.args == ("k1",)
    store.engine.dialect.name = "mssql"
    with store.session() as s, pytest.raises(NotImplementedError, match="no queued-job cap on mssql"):
        store._lock_owner(s, A)
    store.engine.dialect.name = "sqlite"


def test_an_inline_poll_of_a_locked_file_is_read_busy_at_once(store: JobStore, tmp_path: Path) -> None:
    store.create(job("j"))
    with store._reader.connect() as c:
        assert c.execute(text("PRAGMA busy_timeout")).scalar() == 50
    assert store._reader.pool.size() == 2
    store.engine.dispose()
    store._reader.dispose()
    holder = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(ReadBusy, match="database is locked"):
            store.poll_inline("j", A)
    finally:
        holder.execute("COMMIT")
        holder.close()


def test_the_store_is_used_from_many_threads(store: JobStore) -> None:
    """The API runs store calls in a thread pool: pooled SQLite connections cross threads."""
    from concurrent.futures import ThreadPoolExecutor

    store.create(job("j"))
    with store.engine.connect() as c:
        assert c.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
    assert store.engine.pool.size() == 64
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda _: store.get("j").id, range(8)))
    assert found == ["j"] * 8


def test_postgres_engine_settings_and_urls(pg_url: str) -> None:
    engine = make_engine(pg_url.replace("postgresql://", "postgres://") + "?application_name=a://b")
    try:
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.url.query == {"application_name": "a://b"}
        assert engine.pool._pre_ping is True
        assert (engine.pool.size(), engine.pool._max_overflow) == (10, 20)
    finally:
        engine.dispose()


def test_an_older_postgres_database_gains_typed_columns(pg_url: str) -> None:
    JobStore(pg_url).close()
    engine = make_engine(pg_url)
    with engine.begin() as c:
        c.execute(text("ALTER TABLE jobs DROP COLUMN started_at"))
    engine.dispose()
    store = JobStore(pg_url)
    try:
        with store.engine.connect() as c:
            kind = c.execute(
                text(
                    "SELECT data_type FROM information_schema.columns WHERE table_name='jobs' AND column_name='started_at'"
                )
            ).scalar()
        assert kind == "timestamp with time zone"
        store.create(job("j"))
        assert store.claim("j", "w").job.started_at.tzinfo is not None
    finally:
        store.close()


def test_expiry_hands_out_at_most_100_jobs_per_call_by_default(store: JobStore) -> None:
    with store.session() as s:
        for i in range(101):
            s.add(job(f"j{i:03d}", status="succeeded", finished_at=utcnow() - timedelta(hours=1)))
    first = store.expired(utcnow())
    assert len(first) == 100 and first[0] == "j000" and first[-1] == "j099"
