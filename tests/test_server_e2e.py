"""The job server with real processes: ``animate serve`` / ``animate worker`` subprocesses over HTTP.

End to end with a Range download, a worker SIGKILLed mid-job (the next worker finishes it, attempts = 2),
SIGTERM hand-back, an API restart mid-job, cancel of queued and running jobs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from animate.media import open_video
from tests.conftest import DANCE, WOMAN_JPG

SERVE = "import typer; from animate.cli.serve import serve; typer.run(serve)"
WORKER = "from animate.cli.serve import worker_main; worker_main()"
SHORT = {"max_frames": 8, "width": 288, "height": 512, "engine": "warp"}
LONG = {"max_frames": 48, "width": 288, "height": 512, "engine": "warp"}  # ~15-30 s on two loaded cores
FINISHED = ("succeeded", "failed", "canceled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """An API process and any number of worker processes sharing one data folder (and URLs)."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.env = {
            **os.environ,
            "ANIMATE_DATA_DIR": str(root / "data"),
            "ANIMATE_SERVER__HEARTBEAT_SECONDS": "0.5",
            "ANIMATE_SERVER__MAINTENANCE_SECONDS": "0.5",
            "ANIMATE_SERVER__STALE_AFTER_SECONDS": "5",
            **(env or {}),
        }
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        self._logs = 0

    def _spawn(self, code: str, *args: str) -> subprocess.Popen:
        self._logs += 1
        log = open(self.root / f"process-{self._logs}.log", "wb")  # noqa: SIM115 - lives as long as the process
        return subprocess.Popen([sys.executable, "-c", code, *args], env=self.env, stdout=log, stderr=log)

    def start_api(self, workers: int = 0) -> None:
        self.api = self._spawn(SERVE, "--port", str(self.port), "--workers", str(workers))
        self.wait(lambda: self._get("/healthz") == 200, 60, "the API did not start")

    def start_worker(self) -> subprocess.Popen:
        process = self._spawn(WORKER)
        self.workers.append(process)
        return process

    def _get(self, path: str) -> int | None:
        try:
            return self.http.get(path).status_code
        except httpx.TransportError:
            return None

    def wait(self, condition: Callable[[], bool], timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{message}\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.root.glob("*.log"))
        )

    def submit(self, options: dict, reference: Path = WOMAN_JPG, driving: Path = DANCE) -> dict:
        with reference.open("rb") as ref, driving.open("rb") as drv:
            response = self.http.post(
                "/v1/jobs",
                files={"reference": (reference.name, ref), "driving": (driving.name, drv)},
                data={k: str(v) for k, v in options.items()},
            )
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        response = self.http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for(self, job_id: str, condition: Callable[[dict], bool], timeout: float = 120) -> dict:
        seen: dict = {}

        def check() -> bool:
            seen.update(self.job(job_id))
            return condition(seen)

        self.wait(check, timeout, f"job {job_id} never got there; last: {json.dumps(seen)}")
        return seen

    def stop(self) -> None:
        for process in [*self.workers, self.api]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [*self.workers, self.api]:
            if process is not None:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        self.http.close()


@pytest.fixture()
def cluster(tmp_path: Path, data_dir: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.stop()


def worker_children(pid: int) -> list:
    """The worker processes a ``serve`` or ``worker --gpus`` process runs (exec'd, not yet reaped ones left out)."""
    import psutil

    found = []
    for child in psutil.Process(pid).children():
        try:
            if "worker_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # a dead one not reaped yet
            pass
    return found


def test_serve_end_to_end_with_range_download(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_api(workers=1)
    cluster.wait(lambda: cluster.http.get("/readyz").status_code == 200, 60, "no live worker")
    # The embedded worker dies (OOM killer, a crash): serve starts another, which runs the job below.
    (first,) = worker_children(cluster.api.pid)
    first.kill()
    cluster.wait(
        lambda: [w.pid for w in worker_children(cluster.api.pid)] not in ([], [first.pid]),
        30,
        "no new worker",
    )
    job = cluster.submit(SHORT)
    done = cluster.wait_for(job["id"], lambda j: j["status"] in FINISHED)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1 and done["progress"]["fraction"] == 1.0 and done["queue_position"] is None
    assert done["result"]["frames"] == 8 and (done["result"]["width"], done["result"]["height"]) == (288, 512)
    assert done["started_at"] <= done["finished_at"]

    head = cluster.http.get(done["urls"]["video"], headers={"Range": "bytes=0-1023"})
    assert head.status_code == 206 and len(head.content) == 1024
    total = int(head.headers["content-range"].rsplit("/", 1)[1])
    tail = cluster.http.get(done["urls"]["video"], headers={"Range": f"bytes=1024-{total - 1}"})
    assert tail.status_code == 206
    video = tmp_path / "downloaded.mp4"
    video.write_bytes(head.content + tail.content)
    assert video.read_bytes() == cluster.http.get(done["urls"]["video"]).content
    with open_video(video) as opened:
        assert (opened.info.width, opened.info.height) == (288, 512)

    assert {"skeleton", "motion", "poses"} <= set(done["urls"]["artifacts"])
    skeleton = cluster.http.get(done["urls"]["artifacts"]["skeleton"])
    assert skeleton.status_code == 200 and skeleton.headers["content-type"] == "video/mp4"

    events = cluster.http.get(f"/v1/jobs/{job['id']}/events").text
    assert events.startswith("event: job\ndata: ") and '"status":"succeeded"' in events

    metrics = cluster.http.get("/metrics").text
    assert 'animate_jobs{status="succeeded"} 1' in metrics
    assert 'animate_stage_duration_seconds_count{stage="pose"} 1' in metrics
    assert "animate_workers_live 1" in metrics

    # A reference with nobody in it: the job fails with a code, the server stays healthy.
    empty = tmp_path / "wall.png"
    Image.new("RGB", (512, 768), (180, 170, 160)).save(empty)
    failed = cluster.wait_for(cluster.submit(SHORT, reference=empty)["id"], lambda j: j["status"] in FINISHED)
    assert failed["status"] == "failed" and failed["error"]["code"] == "no_person_detected", failed
    assert cluster.http.get("/healthz").status_code == 200

    assert cluster.http.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert cluster.http.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert not (tmp_path / "data" / "jobs" / job["id"]).exists()


def test_killed_worker_job_is_finished_by_the_next_worker(cluster: Cluster) -> None:
    cluster.start_api()
    first = cluster.start_worker()
    job = cluster.submit(LONG)
    cluster.wait_for(job["id"], lambda j: j["status"] == "running" and j["progress"]["fraction"] > 0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert cluster.job(job["id"])["status"] == "running"  # nobody knows yet

    # The API restarts mid-job: the job's state is in the database, not in the API process.
    cluster.api.terminate()
    cluster.api.wait(timeout=20)
    cluster.start_api()
    assert cluster.job(job["id"])["status"] == "running"

    cluster.start_worker()
    done = cluster.wait_for(job["id"], lambda j: j["status"] in FINISHED, timeout=180)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert cluster.http.get(done["urls"]["video"]).status_code == 200
    folders = sorted(p.name for p in (cluster.root / "data" / "jobs" / job["id"]).glob("attempt-*"))
    assert folders == ["attempt-2"]  # the killed attempt's partial output is gone


def test_sigterm_hands_the_running_job_back(cluster: Cluster) -> None:
    cluster.start_api()
    first = cluster.start_worker()
    job = cluster.submit(LONG)
    cluster.wait_for(job["id"], lambda j: j["status"] == "running")
    first.terminate()
    assert first.wait(timeout=30) == 0
    back = cluster.job(job["id"])
    assert back["status"] == "queued" and back["attempts"] == 1, back  # at once, no stale wait
    cluster.start_worker()
    done = cluster.wait_for(job["id"], lambda j: j["status"] in FINISHED, timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done


def test_cancel_queued_and_running_then_the_next_job_runs(cluster: Cluster) -> None:
    cluster.start_api()
    cluster.start_worker()
    running, queued, last = cluster.submit(LONG), cluster.submit(LONG), cluster.submit(SHORT)
    cluster.wait_for(running["id"], lambda j: j["status"] == "running")
    assert cluster.job(queued["id"])["queue_position"] == 0

    canceled = cluster.http.post(f"/v1/jobs/{queued['id']}/cancel").json()
    assert canceled["status"] == "canceled"  # at once
    assert cluster.job(last["id"])["queue_position"] == 0

    asked = time.monotonic()
    assert cluster.http.post(f"/v1/jobs/{running['id']}/cancel").status_code == 200
    stopped = cluster.wait_for(running["id"], lambda j: j["status"] in FINISHED, timeout=30)
    assert stopped["status"] == "canceled" and stopped["urls"]["video"] is None
    assert time.monotonic() - asked < 10

    done = cluster.wait_for(last["id"], lambda j: j["status"] in FINISHED)
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert cluster.job(queued["id"])["attempts"] == 0  # never started
    assert cluster.http.post(f"/v1/jobs/{last['id']}/cancel").json()["error"]["code"] == "job_finished"


def test_webhook_is_signed_and_retried(tmp_path: Path, data_dir: Path) -> None:
    import base64
    import hashlib
    import hmac
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[tuple[dict, bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(500 if len(received) == 1 else 204)  # the first delivery fails: retried
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    receiver = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    cluster = Cluster(tmp_path, env={"ANIMATE_SERVER__ALLOW_PRIVATE_WEBHOOKS": "1"})
    try:
        cluster.start_api(workers=1)
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        job = cluster.submit({**SHORT, "webhook_url": url})
        assert "webhook_url" not in job["options"]
        cluster.wait_for(job["id"], lambda j: j["status"] in FINISHED)
        cluster.wait(lambda: len(received) >= 2, 30, "the webhook was not retried")
    finally:
        cluster.stop()
        receiver.shutdown()
    (first_headers, _), (headers, body) = received[:2]
    assert json.loads(body)["status"] == "succeeded" and json.loads(body)["id"] == job["id"]
    assert headers["webhook-id"] == first_headers["webhook-id"]  # the same message, delivered again
    secret = (tmp_path / "data" / "webhook_secret").read_text().strip()
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"


def test_retention_removes_finished_files_and_leaves_running_jobs(tmp_path: Path, data_dir: Path) -> None:
    retention = 4.0  # seconds
    orphan = tmp_path / "data" / "jobs" / ("0" * 32)  # an upload cut off by a crash: a folder, no row
    orphan.mkdir(parents=True)
    (orphan / "reference.jpg").write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(orphan, (two_hours_ago, two_hours_ago))

    cluster = Cluster(tmp_path, env={"ANIMATE_SERVER__RETENTION_HOURS": str(retention / 3600)})
    try:
        cluster.start_api(workers=1)
        # the long job must outlive several sweeps whatever the machine's speed: all 288 frames, canceled below
        whole_clip = {**LONG, "max_frames": 288, "width": 576, "height": 1024}
        short, long = cluster.submit(SHORT), cluster.submit(whole_clip)
        done = cluster.wait_for(short["id"], lambda j: j["status"] in FINISHED)
        assert done["status"] == "succeeded", done
        assert done["expired"] is False and done["expires_at"] is not None
        folder = tmp_path / "data" / "jobs" / short["id"]

        expired = cluster.wait_for(short["id"], lambda j: j["expired"], timeout=30)
        assert expired["status"] == "succeeded" and expired["urls"]["video"] is None  # the row stays
        assert expired["urls"]["artifacts"] == {} and expired["result"]["frames"] == 8
        for path in (done["urls"]["video"], done["urls"]["artifacts"]["skeleton"]):
            gone = cluster.http.get(path)
            assert gone.status_code == 410 and gone.json()["error"]["code"] == "expired", gone.text
        assert not folder.exists()
        assert not orphan.exists()

        running = cluster.wait_for(long["id"], lambda j: j["status"] == "running")
        time.sleep(retention + 1)  # the sweep ran several times while it was running
        running = cluster.job(long["id"])
        assert running["status"] == "running" and running["expired"] is False
        inputs = tmp_path / "data" / "jobs" / long["id"]
        assert (inputs / "reference.jpg").is_file() and (inputs / "driving.mp4").is_file()

        cluster.http.post(f"/v1/jobs/{long['id']}/cancel")
        canceled = cluster.wait_for(long["id"], lambda j: j["status"] in FINISHED, timeout=30)
        assert canceled["status"] == "canceled"
        cluster.wait_for(long["id"], lambda j: j["expired"], timeout=30)
        assert not inputs.exists()
    finally:
        cluster.stop()


def test_worker_gpus_runs_one_process_per_gpu(cluster: Cluster) -> None:
    import psutil

    cluster.start_api()
    parent = cluster._spawn(
        "import typer; from animate.cli.serve import worker; typer.run(worker)", "--gpus", "0,1"
    )
    cluster.workers.append(parent)  # stopped by the fixture whatever happens
    live = "animate_workers_live 2\n"
    cluster.wait(lambda: live in cluster.http.get("/metrics").text, 90, "two GPU workers never showed")
    children = psutil.Process(parent.pid).children()
    assert len(children) == 2
    assert sorted(c.environ()["CUDA_VISIBLE_DEVICES"] for c in children) == ["0", "1"]

    jobs = [cluster.submit(LONG)["id"] for _ in range(2)]
    for job in jobs:  # both at once: each process took one
        cluster.wait_for(job, lambda j: j["status"] == "running")
    log = "\n".join(p.read_text(errors="replace") for p in cluster.root.glob("process-*.log"))
    devices = {}
    for job in jobs:
        found = re.search(rf"job {job} attempt 1 started on \S+:(\d+):\w+ \(CUDA_VISIBLE_DEVICES=(\d)\)", log)
        assert found, log
        devices[job] = (int(found.group(1)), found.group(2))
    assert sorted(devices.values()) == sorted((c.pid, c.environ()["CUDA_VISIBLE_DEVICES"]) for c in children)
    for job in jobs:
        cluster.http.post(f"/v1/jobs/{job}/cancel")
    for job in jobs:
        assert cluster.wait_for(job, lambda j: j["status"] in FINISHED)["status"] == "canceled"

    # A worker that dies is replaced, on the same GPU.
    lost = children[0]
    lost.kill()
    lost.wait(timeout=10)

    def replaced() -> bool:  # exec'd: before that, a child still shows its parent's environment
        now = worker_children(parent.pid)
        return len(now) == 2 and lost.pid not in {c.pid for c in now}

    cluster.wait(replaced, 30, "the dead worker was not replaced")
    now = worker_children(parent.pid)
    assert sorted(c.environ()["CUDA_VISIBLE_DEVICES"] for c in now) == ["0", "1"]

    parent.terminate()
    assert parent.wait(timeout=40) == 0
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in [*children, *now])
