"""Issue 13, resource and job rows: hostile inputs and faults against a real ``animate serve`` process.

Probe concurrency (row 2), the queued-job cap under racing submits on SQLite and PostgreSQL (5), a disk that
fills during a job or an upload (8, 9), a video longer than its header says (11), webhook redirects and
IPv4-in-IPv6 targets (12, 13), a driving video claiming 1000 fps (14), a killed attempt's files (15).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import av
import httpx
import psutil
import pytest
from PIL import Image, ImageDraw

from animate.media import open_video
from animate.media.errors import MediaError
from animate.settings import MediaLimits
from server.models import Job
from server.probe import ProbeBusy, ProbeSlots
from server.store import JobStore, QueueFull
from server.webhooks import PrivateTarget, check_address, post_pinned
from tests.conftest import DANCE, WOMAN_JPG
from tests.test_server_e2e import FINISHED, LONG, SHORT, Cluster

KEY = "key-attacks-0123456789"


def post_job(http: httpx.Client, options: dict, reference: Path = WOMAN_JPG, driving: Path = DANCE, **kw):
    with reference.open("rb") as ref, driving.open("rb") as drv:
        return http.post(
            "/v1/jobs",
            files={"reference": (reference.name, ref), "driving": (driving.name, drv)},
            data={k: str(v) for k, v in options.items()},
            **kw,
        )


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    return body


def job_folders(jobs: Path) -> list[str]:
    return sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() else []


def dance_frames(count: int, size: tuple[int, int] = (288, 512)) -> list:
    with open_video(DANCE) as video:
        return list(video.frames(size=size, max_frames=count))


def write_video(path: Path, frames: list, rate: int, container: str | None = None) -> Path:
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


# --- row 2: probes ----------------------------------------------------------------------------------------


def _big_png(path: Path) -> Path:
    """6000 x 6000 (36 MP, under the 40 MP cap) yet ~100 KiB: cheap to send, ~100 MB to decode."""
    image = Image.new("RGB", (6000, 6000), (200, 190, 180))
    ImageDraw.Draw(image).ellipse((2000, 1000, 4000, 5000), fill=(90, 60, 50))
    image.save(path, optimize=False, compress_level=9)
    return path


def _probe_children(api_pid: int) -> int:
    """Probe processes alive now: the children of the API's fork server."""
    count = 0
    for child in psutil.Process(api_pid).children():
        try:
            if "forkserver" in " ".join(child.cmdline()):
                count += len(child.children())
        except psutil.Error:
            pass
    return count


def test_concurrent_probes_are_bounded_and_the_excess_gets_503(tmp_path: Path, data_dir: Path) -> None:
    png = _big_png(tmp_path / "big.png")
    small = tmp_path / "small.mp4"
    write_video(small, dance_frames(4, (144, 256)), 4)
    env = {"ANIMATE_SERVER__PROBE_SLOTS": "1", "ANIMATE_SERVER__PROBE_WAIT_SECONDS": "0.05"}
    cluster = Cluster(tmp_path, env=env)
    try:
        cluster.start_api()
        peak, stop = [0], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _probe_children(cluster.api.pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post_job(cluster.http, {}, png, small), range(8)))
        stop.set()
        sampler.join()
        assert cluster.http.get("/healthz").status_code == 200
    finally:
        cluster.stop()
    accepted = [a for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code != 202]
    assert accepted and refused, [a.status_code for a in answers]
    for answer in refused:
        assert_error(answer, 503, "probe_busy")
        assert int(answer.headers["retry-after"]) >= 1
    assert peak[0] == 1  # 8 at once before: one child each
    jobs = tmp_path / "data" / "jobs"
    assert job_folders(jobs) == sorted(a.json()["id"] for a in accepted)  # refused uploads left nothing


def test_probe_slots_wait_then_refuse() -> None:
    async def scenario() -> list[str]:
        slots, seen = ProbeSlots(1, wait_seconds=0.2), []
        async with slots.slot():
            try:
                async with slots.slot():
                    seen.append("second ran")
            except ProbeBusy:
                seen.append("busy")
        async with ProbeSlots(1, wait_seconds=0).slot():  # a free slot needs no waiting
            seen.append("free")

        async def hold() -> None:
            async with slots.slot():
                await asyncio.sleep(0.05)
                seen.append("held")

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        async with slots.slot():  # waits out the holder (under 0.2 s)
            seen.append("waited")
        await holder
        return seen

    assert asyncio.run(scenario()) == ["busy", "free", "held", "waited"]


# --- row 5: the queued-job cap ----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def job_database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {}
        return
    from tests.test_server_distributed import PG_HOST, PG_PORT, _require

    _require("PostgreSQL", PG_PORT)
    import psycopg

    name = f"animate_test_{uuid.uuid4().hex[:10]}"
    admin = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield {"ANIMATE_SERVER__DATABASE_URL": f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"}
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_queued_cap_holds_under_concurrent_submits(
    tmp_path: Path, data_dir: Path, job_database: dict[str, str]
) -> None:
    small = write_video(tmp_path / "small.mp4", dance_frames(4, (144, 256)), 4)
    env = {
        **job_database,
        "ANIMATE_SERVER__API_KEYS": f'["{KEY}"]',
        "ANIMATE_SERVER__MAX_QUEUED_PER_KEY": "3",
        "ANIMATE_SERVER__PROBE_SLOTS": "10",  # all ten reach the insert together
    }
    cluster = Cluster(tmp_path, env=env)
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        cluster.start_api()  # no worker: every accepted job stays queued
        with ThreadPoolExecutor(10) as pool:
            answers = list(
                pool.map(lambda _: post_job(cluster.http, {}, driving=small, headers=headers), range(10))
            )
        listed = cluster.http.get("/v1/jobs", params={"status": "queued"}, headers=headers).json()["jobs"]
    finally:
        cluster.stop()
    assert sorted(a.status_code for a in answers) == [202] * 3 + [429] * 7, [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 429:
            assert_error(answer, 429, "queued_limit")
            assert int(answer.headers["retry-after"]) >= 1
    assert len(listed) == 3
    assert len(job_folders(tmp_path / "data" / "jobs")) == 3  # the refused uploads were removed


def _race_creates(store: JobStore, owner: str, cap: int, callers: int) -> list[str]:
    """``callers`` threads insert a queued job for ``owner`` at the same moment."""
    start, outcomes = threading.Barrier(callers), []

    def create() -> None:
        job = Job(
            id=uuid.uuid4().hex,
            owner=owner,
            status="queued",
            options={},
            reference_name="reference.jpg",
            driving_name="driving.mp4",
            request_digest="",
        )
        start.wait()
        try:
            store.create(job, queued_cap=cap)
            outcomes.append("created")
        except QueueFull:
            outcomes.append("full")

    threads = [threading.Thread(target=create) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes)


def test_store_counts_and_inserts_under_one_lock(tmp_path: Path, job_database: dict[str, str]) -> None:
    url = job_database.get("ANIMATE_SERVER__DATABASE_URL", f"sqlite:///{tmp_path / 'jobs.db'}")
    store = JobStore(url)
    try:
        for _ in range(3):  # a race that a missing lock loses only sometimes: three rounds
            owner = uuid.uuid4().hex
            assert _race_creates(store, owner, cap=3, callers=10) == ["created"] * 3 + ["full"] * 7
            assert store.count_queued(owner) == 3
    finally:
        store.close()


# --- rows 8 and 9: a full disk ----------------------------------------------------------------------------


def _unshare_prefix() -> list[str]:
    return (
        ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    )


@pytest.fixture(scope="module")
def tmpfs_works(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A private tmpfs in a mount namespace: root, or an unprivileged user namespace where allowed."""
    probe = tmp_path_factory.mktemp("tmpfs")
    script = 'mount -t tmpfs -o size=1m tmpfs "$0"'
    if (
        shutil.which("unshare") is None
        or subprocess.run([*_unshare_prefix(), "sh", "-c", script, str(probe)]).returncode
    ):
        pytest.skip("cannot mount a private tmpfs here (no root and no user namespaces)")


class TinyDiskCluster(Cluster):
    """The processes run in their own mount namespace, with the data folder on a small tmpfs."""

    def __init__(self, root: Path, size: int, env: dict[str, str] | None = None) -> None:
        super().__init__(root, env)
        self.size = size
        (root / "data").mkdir(parents=True, exist_ok=True)

    def _spawn(self, code: str, *args: str) -> subprocess.Popen:
        self._logs += 1
        log = open(self.root / f"process-{self._logs}.log", "wb")  # noqa: SIM115 - lives as long as the process
        script = f'mount -t tmpfs -o size={self.size} tmpfs "$0" && exec "$@"'
        command = [
            *_unshare_prefix(),
            "sh",
            "-c",
            script,
            str(self.root / "data"),
            sys.executable,
            "-c",
            code,
        ]
        return subprocess.Popen([*command, *args], env=self.env, stdout=log, stderr=log)

    @property
    def data(self) -> Path:
        """The data folder as the server sees it (its mount namespace, through /proc)."""
        return Path(f"/proc/{self.api.pid}/root") / (self.root / "data").relative_to("/")

    def fill(self, leave: int) -> Path:
        filler = self.data / "filler"
        free = os.statvfs(self.data).f_bavail * os.statvfs(self.data).f_frsize
        with filler.open("ab") as handle:
            handle.write(b"\0" * max(0, free - leave))
        return filler


NO_OS_TEXT = ("errno", "no space", "/", "oserror")


@pytest.mark.slow
def test_a_full_disk_fails_the_upload_with_507_and_the_job_with_disk_full(
    tmp_path: Path, data_dir: Path, tmpfs_works: None
) -> None:
    cluster = TinyDiskCluster(tmp_path, size=24 * 1024 * 1024)
    try:
        cluster.start_api(workers=1)
        jobs = cluster.data / "jobs"
        # the worker holds a few MiB in reserve, given back when a job fills the disk: the outcome fits then
        cluster.wait(lambda: (cluster.data / "disk-reserve").is_file(), 60, "no disk reserve")

        # row 9: the upload itself does not fit
        filler = cluster.fill(leave=512 * 1024)
        body = assert_error(post_job(cluster.http, SHORT), 507, "insufficient_storage")
        assert not any(word in body["error"]["message"].lower() for word in NO_OS_TEXT), body
        assert job_folders(jobs) == []  # nothing half-written
        filler.unlink()

        # row 8: the outputs do not fit
        job = post_job(cluster.http, LONG)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        cluster.wait_for(job_id, lambda j: j["status"] == "running", timeout=60)
        filler = cluster.fill(leave=64 * 1024)
        full = time.monotonic()
        failed = cluster.wait_for(job_id, lambda j: j["status"] in FINISHED, timeout=60)
        assert failed["status"] == "failed" and failed["error"]["code"] == "disk_full", failed
        assert time.monotonic() - full < 30  # was: running for 90 s and more, then retried
        assert not any(word in failed["error"]["message"].lower() for word in NO_OS_TEXT), failed
        assert list((jobs / job_id).glob("attempt-*")) == []  # partial outputs removed
        assert cluster.http.get("/healthz").status_code == 200

        # space returns: the same job submitted again runs
        filler.unlink()
        again = cluster.wait_for(
            post_job(cluster.http, SHORT).json()["id"], lambda j: j["status"] in FINISHED
        )
        assert again["status"] == "succeeded", again
    finally:
        cluster.stop()
    log = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("process-*.log"))
    assert log.count("Traceback") <= 2, log[-4000:]


# --- row 11: a video longer than its header says ----------------------------------------------------------


def _lying_mkv(path: Path, frames: list, rate: int, claimed_seconds: float) -> Path:
    """A Matroska file whose Segment Duration claims ``claimed_seconds``, whatever it holds."""
    write_video(path, frames, rate, container="matroska")
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")  # Duration, an 8-byte float in milliseconds
    assert at > 0
    data[at + 3 : at + 11] = struct.pack(">d", claimed_seconds * 1000)
    path.write_bytes(data)
    return path


def test_decoding_stops_where_the_real_length_passes_the_limit(tmp_path: Path, data_dir: Path) -> None:
    frames = dance_frames(1, (64, 64)) * 30
    mkv = _lying_mkv(tmp_path / "long.mkv", frames, 5, claimed_seconds=1.0)
    header_passes = [MediaLimits(max_video_seconds=2), MediaLimits(max_video_seconds=60, max_video_frames=29)]
    for limits in header_passes:  # 5.8 s over 2 s; 30 frames over 29
        video = open_video(mkv, limits)
        with pytest.raises(MediaError) as refused:
            sum(1 for _ in video.frames())
        assert refused.value.code == "too_long"
    video = open_video(mkv, MediaLimits(max_video_seconds=6, max_video_frames=30))
    assert sum(1 for _ in video.frames()) == 30  # within both


@pytest.mark.slow
def test_a_video_longer_than_its_header_says_fails_too_long(tmp_path: Path, data_dir: Path) -> None:
    base = dance_frames(6)
    mkv = _lying_mkv(tmp_path / "long.mkv", [base[i % 6] for i in range(30)], 5, claimed_seconds=1.0)
    with open_video(mkv) as video:
        assert (video.duration, video.frame_count) == (1.0, 5)  # what the header says: 6 s are inside
    cluster = Cluster(tmp_path, env={"ANIMATE_MEDIA__MAX_VIDEO_SECONDS": "2"})
    try:
        cluster.start_api(workers=1)
        job = cluster.submit({"width": 288, "height": 512, "engine": "warp"}, driving=mkv)
        done = cluster.wait_for(job["id"], lambda j: j["status"] in FINISHED)
    finally:
        cluster.stop()
    assert done["status"] == "failed" and done["error"]["code"] == "too_long", done
    assert done["progress"]["stage"] in ("decode", "pose"), done  # stopped before rendering


# --- rows 12 and 13: webhooks -----------------------------------------------------------------------------


class _Hits(BaseHTTPRequestHandler):
    hits: list[str]
    location: str | None

    def _answer(self) -> None:
        self.hits.append(self.command)
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.send_response(302 if self.location else 204)
        if self.location:
            self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def _receiver(location: str | None) -> tuple[HTTPServer, list[str]]:
    hits: list[str] = []
    handler = type("Receiver", (_Hits,), {"hits": hits, "location": location})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


@pytest.mark.slow
def test_webhook_redirects_are_not_followed(tmp_path: Path, data_dir: Path) -> None:
    elsewhere, elsewhere_hits = _receiver(None)
    redirector, redirect_hits = _receiver(f"http://127.0.0.1:{elsewhere.server_address[1]}/stolen")
    cluster = Cluster(tmp_path, env={"ANIMATE_SERVER__ALLOW_PRIVATE_WEBHOOKS": "1"})
    try:
        cluster.start_api(workers=1)
        url = f"http://127.0.0.1:{redirector.server_address[1]}/hook"
        job = cluster.submit({**SHORT, "webhook_url": url})
        cluster.wait_for(job["id"], lambda j: j["status"] in FINISHED)
        cluster.wait(lambda: len(redirect_hits) >= 2 or elsewhere_hits, 30, "the webhook was not delivered")
    finally:
        cluster.stop()
        redirector.shutdown()
        elsewhere.shutdown()
    assert set(redirect_hits) == {"POST"}  # a 3xx is not a delivery: retried, to the same URL
    assert elsewhere_hits == []


def test_delivery_connects_to_the_address_that_was_checked() -> None:
    """No second lookup between the check and the connection (DNS rebinding): the name is not resolved."""
    seen: list[str] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(f"{self.path} {self.headers['host']}")
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    receiver = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        port = receiver.server_address[1]
        url = f"http://hooks.example.invalid:{port}/h?x=1"  # .invalid never resolves
        assert post_pinned(url, "127.0.0.1", b"{}", {"content-type": "application/json"}) == 204
    finally:
        receiver.shutdown()
    assert seen == [f"/h?x=1 hooks.example.invalid:{port}"]


EMBEDDED = [
    "http://[64:ff9b::7f00:1]/h",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/h",  # NAT64 of the link-local metadata address
    "http://[2002:7f00:1::]/h",  # 6to4 of 127.0.0.1
    "http://[2002:a9fe:a9fe::1]/h",  # 6to4 of 169.254.169.254
    "http://[::ffff:127.0.0.1]/h",  # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/h",
    "http://[::127.0.0.1]/h",  # IPv4-compatible (deprecated)
    "http://[::10.0.0.1]/h",
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/h",  # Teredo, client 127.0.0.1
    "http://[64:ff9b:1::a00:1]/h",  # local-use NAT64 (RFC 8215)
]


def test_webhook_targets_hiding_private_ipv4_in_ipv6_are_refused(tmp_path: Path, data_dir: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        cluster.start_api()
        malformed = [
            "http://example.com:99999/h",
            "http://[::1/h",
            f"http://{'a' * 300}.example/h",
        ]  # were 500s
        for url in [*EMBEDDED, *malformed]:
            assert_error(post_job(cluster.http, {"webhook_url": url}), 422, "invalid_webhook")
        assert job_folders(tmp_path / "data" / "jobs") == []
    finally:
        cluster.stop()


@pytest.mark.parametrize("url", EMBEDDED)
def test_check_address_unwraps_embedded_ipv4(url: str) -> None:
    with pytest.raises(PrivateTarget):
        check_address(ipaddress.ip_address(url.split("[")[1].split("]")[0]))


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "64:ff9b::5db8:d70e"]
)
def test_check_address_lets_public_ones_through(address: str) -> None:
    check_address(ipaddress.ip_address(address))  # NAT64 of a public IPv4 address is public too


# --- row 14: a driving video claiming 1000 fps ------------------------------------------------------------


@pytest.mark.slow
def test_a_1000_fps_driving_video_renders_at_60_fps(tmp_path: Path, data_dir: Path) -> None:
    base = dance_frames(8)
    fast = write_video(tmp_path / "fast.mp4", [base[i // 8] for i in range(64)], 1000)  # 0.064 s
    with open_video(fast) as video:
        assert round(video.fps) == 1000
    cluster = Cluster(tmp_path)
    try:
        cluster.start_api(workers=1)
        job = cluster.submit({"width": 288, "height": 512, "engine": "warp"}, driving=fast)
        done = cluster.wait_for(job["id"], lambda j: j["status"] in FINISHED)
    finally:
        cluster.stop()
    assert done["status"] == "succeeded", done
    assert done["result"]["fps"] == 60.0 and 3 <= done["result"]["frames"] <= 5, done[
        "result"
    ]  # 0.064 s x 60


# --- row 15: the files of an attempt that lost ------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_attempts_files_are_removed_when_the_retry_succeeds(tmp_path: Path, data_dir: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        cluster.start_api()
        first = cluster.start_worker()
        job = cluster.submit(LONG)
        folder = tmp_path / "data" / "jobs" / job["id"]
        cluster.wait_for(job["id"], lambda j: j["progress"]["stage"] == "render", timeout=180)
        assert (folder / "attempt-1" / "artifacts").is_dir()  # it had written files
        first.send_signal(signal.SIGKILL)
        first.wait()
        cluster.start_worker()
        done = cluster.wait_for(job["id"], lambda j: j["status"] in FINISHED, timeout=180)
    finally:
        cluster.stop()
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    assert sorted(p.name for p in folder.glob("attempt-*")) == ["attempt-2"]


def test_a_database_from_an_older_release_gains_the_new_columns(
    tmp_path: Path, job_database: dict[str, str]
) -> None:
    """A jobs table made before ``inputs`` existed (create_all never alters a table) is migrated at start:
    its rows stay readable and new jobs keep their display names, on SQLite and PostgreSQL."""
    from sqlalchemy import inspect as inspect_db
    from sqlalchemy import text

    from server.models import Job
    from server.store import JobStore, make_engine

    url = job_database.get("ANIMATE_SERVER__DATABASE_URL", f"sqlite:///{tmp_path / 'old.db'}")
    JobStore(url).close()
    old = make_engine(url)
    with old.begin() as connection:  # the table as the older release made it
        connection.execute(text('ALTER TABLE jobs DROP COLUMN "inputs"'))
        connection.execute(
            text(
                "INSERT INTO jobs (id, owner, status, options, reference_name, driving_name, request_digest,"
                " created_at, attempts, cancel_requested, fraction, step, total, files_deleted) VALUES"
                " ('old', '', 'queued', '{}', 'reference.jpg', 'driving.mp4', '', :now, 0, false, 0, 0, 0, false)"
            ),
            {"now": "2026-01-01 00:00:00"},
        )
    assert "inputs" not in {c["name"] for c in inspect_db(old).get_columns("jobs")}
    old.dispose()

    store = JobStore(url)
    try:
        assert store.get("old", "").inputs is None
        names = {"reference": "照片.jpg", "driving": None}
        store.create(Job(id="new", reference_name="r.jpg", driving_name="d.mp4", options={}, inputs=names))
        assert store.get("new", "").inputs == names
    finally:
        store.close()
