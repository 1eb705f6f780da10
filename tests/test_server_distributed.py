"""API + two workers on real infrastructure: PostgreSQL for the jobs, Redis or PostgreSQL for the queue.

Skips when the services are absent, unless ``ANIMATE_REQUIRE_SERVICES=1`` (CI), which makes that a failure.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_server_e2e import FINISHED, SHORT, Cluster

PG_HOST, PG_PORT, REDIS_PORT = "127.0.0.1", 5432, 6379


def _require(service: str, port: int) -> None:
    try:
        socket.create_connection((PG_HOST, port), timeout=2).close()
    except OSError:
        if os.environ.get("ANIMATE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{service} is required (ANIMATE_REQUIRE_SERVICES=1) but not reachable on {port}")
        pytest.skip(f"{service} not reachable at {PG_HOST}:{port}")


@pytest.fixture(params=["redis", "postgresql"], ids=["redis-queue", "postgresql-queue"])
def services(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database for the jobs and a fresh queue (Redis, or the same database), removed after."""
    _require("PostgreSQL", PG_PORT)
    if request.param == "redis":
        _require("Redis", REDIS_PORT)
    import psycopg

    name = f"animate_test_{uuid.uuid4().hex[:10]}"
    admin = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"
    database = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    queue = f"redis://{PG_HOST}:{REDIS_PORT}/0" if request.param == "redis" else database
    try:
        yield {
            "ANIMATE_SERVER__DATABASE_URL": database,
            "ANIMATE_SERVER__QUEUE_URL": queue,
            "ANIMATE_SERVER__QUEUE_NAME": name,
        }
    finally:
        if request.param == "redis":
            import redis

            client = redis.Redis(host=PG_HOST, port=REDIS_PORT)
            for key in client.scan_iter(f"*{name}*"):
                client.delete(key)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_two_workers_on_shared_services_run_each_job_once(tmp_path: Path, data_dir: Path, services) -> None:
    cluster = Cluster(tmp_path, env=services)
    try:
        cluster.start_api()
        workers = [cluster.start_worker(), cluster.start_worker()]
        live = "animate_workers_live 2\n"
        cluster.wait(lambda: live in cluster.http.get("/metrics").text, 60, "two live workers never showed")
        assert cluster.http.get("/readyz").status_code == 200

        # Six jobs on Redis (the check); four on the PostgreSQL queue, enough for both workers twice.
        count = 6 if services["ANIMATE_SERVER__QUEUE_URL"].startswith("redis://") else 4
        jobs = [cluster.submit({**SHORT, "max_frames": 4})["id"] for _ in range(count)]
        results = [cluster.wait_for(job, lambda j: j["status"] in FINISHED, timeout=240) for job in jobs]
        assert [r["status"] for r in results] == ["succeeded"] * count, results
        assert [r["attempts"] for r in results] == [1] * count

        # Each job started exactly once, across both workers, and both workers took jobs.
        started = Counter()
        per_worker = []
        for log in sorted(tmp_path.glob("process-*.log"))[1:]:
            found = re.findall(r"job ([0-9a-f]{32}) attempt \d+ started", log.read_text(errors="replace"))
            started.update(found)
            per_worker.append(len(found))
        assert started == Counter(dict.fromkeys(jobs, 1)), started
        assert len(per_worker) == 2 and all(n >= 1 for n in per_worker), per_worker
        assert all(w.poll() is None for w in workers)
        if services["ANIMATE_SERVER__QUEUE_URL"].startswith("postgresql://"):
            import psycopg

            with psycopg.connect(services["ANIMATE_SERVER__QUEUE_URL"]) as conn:  # the queue lived there
                tables = {
                    r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'huey%'")
                }
                assert "huey_task" in tables, tables
                left = conn.execute(
                    "SELECT count(*) FROM huey_task WHERE queue = %s",
                    (services["ANIMATE_SERVER__QUEUE_NAME"],),
                )
                assert left.fetchone()[0] == 0
    finally:
        cluster.stop()
