"""The API in-process (no worker): submission checks, bad input, idempotency, paging, cancel, auth, metrics.

Every bad request is a 4xx JSON body with a stable ``error.code``, never a 5xx, and the app stays healthy.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from animate.settings import Settings
from server import create_app
from tests.conftest import DANCE, WOMAN_JPG

KEY_A, KEY_B = "key-a-0123456789", "key-b-0123456789"


def make_settings(tmp_path: Path, **server) -> Settings:
    return Settings(data_dir=tmp_path / "data", server=server, media={"max_video_seconds": 60})


@pytest.fixture()
def client(tmp_path: Path, data_dir: Path):
    with TestClient(create_app(make_settings(tmp_path))) as c:
        yield c


def files(reference: Path | bytes = WOMAN_JPG, driving: Path | bytes = DANCE) -> dict:
    def part(name: str, value: Path | bytes):
        data = value.read_bytes() if isinstance(value, Path) else value
        filename = value.name if isinstance(value, Path) else name
        return (filename, data, "application/octet-stream")

    return {"reference": part("reference.jpg", reference), "driving": part("driving.mp4", driving)}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body


def submit(client: TestClient, **kwargs):
    data = {k: str(v) for k, v in kwargs.pop("data", {}).items()}
    return client.post("/v1/jobs", files=kwargs.pop("files", None) or files(), data=data, **kwargs)


def test_submit_answers_202_with_location_and_a_queued_job(client: TestClient) -> None:
    response = submit(client, data={"max_frames": 4, "width": 288, "height": 512, "engine": "warp"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempts"] == 0 and job["queue_position"] == 0
    assert job["options"]["width"] == 288 and job["options"]["engine"] == "warp"
    assert job["progress"] == {"stage": None, "fraction": 0.0, "step": 0, "total": 0}
    assert job["urls"]["video"] is None and job["error"] is None
    again = client.get(job["urls"]["self"]).json()
    assert again["id"] == job["id"] and again["status"] == "queued"
    second = submit(client).json()
    assert client.get(f"/v1/jobs/{second['id']}").json()["queue_position"] == 1


def test_video_of_an_unfinished_job_is_409(client: TestClient) -> None:
    job = submit(client).json()
    assert_error(client.get(f"/v1/jobs/{job['id']}/video"), 409, "not_ready")
    assert_error(client.get(f"/v1/jobs/{job['id']}/artifacts/skeleton"), 409, "not_ready")


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "mono"
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _image_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(buffer, "PNG", optimize=True)  # 144 MP, a few hundred KB
    return buffer.getvalue()


BAD_INPUTS = [
    ("empty reference", lambda tmp: {"files": files(reference=b"")}, 422, "empty_media"),
    ("empty driving", lambda tmp: {"files": files(driving=b"")}, 422, "empty_media"),
    (
        "text as video",
        lambda tmp: {"files": files(driving=b"hello, I am not a video\n" * 50)},
        422,
        "unsupported_format",
    ),
    ("text as image", lambda tmp: {"files": files(reference=b"hello\n" * 50)}, 422, "unsupported_format"),
    ("video as image", lambda tmp: {"files": files(reference=DANCE)}, 422, "unsupported_format"),
    ("image bomb", lambda tmp: {"files": files(reference=_image_bomb())}, 422, "too_large"),
    ("audio only", lambda tmp: {"files": files(driving=_audio_only(tmp / "a.m4a"))}, 422, "no_video_stream"),
    ("truncated mp4", lambda tmp: {"files": files(driving=DANCE.read_bytes()[:20_000])}, 422, None),
    ("unknown option", lambda tmp: {"data": {"strength": 3}}, 422, "unknown_field"),
    ("negative width", lambda tmp: {"data": {"width": -2, "height": 512}}, 422, "invalid_option"),
    ("huge size", lambda tmp: {"data": {"width": 100_000, "height": 100_000}}, 422, "invalid_option"),
    ("odd size", lambda tmp: {"data": {"width": 289, "height": 512}}, 422, "invalid_option"),
    ("width alone", lambda tmp: {"data": {"width": 288}}, 422, "invalid_option"),
    ("bad engine", lambda tmp: {"data": {"engine": "magic"}}, 422, "invalid_option"),
    ("text number", lambda tmp: {"data": {"max_frames": "lots"}}, 422, "invalid_option"),
    ("zero frames", lambda tmp: {"data": {"max_frames": 0}}, 422, "invalid_option"),
    ("fps too high", lambda tmp: {"data": {"fps": 1000}}, 422, "invalid_option"),
    (
        "webhook to loopback",
        lambda tmp: {"data": {"webhook_url": "http://127.0.0.1:9/hook"}},
        422,
        "invalid_webhook",
    ),
    (
        "webhook not http",
        lambda tmp: {"data": {"webhook_url": "file:///etc/passwd"}},
        422,
        "invalid_webhook",
    ),
]


@pytest.mark.parametrize(("case", "build", "status", "code"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_4xx_with_a_code(
    client: TestClient, tmp_path: Path, case, build, status, code
) -> None:
    response = submit(client, **build(tmp_path))
    assert response.status_code == status, response.text
    body = response.json()
    if code is None:  # the exact code depends on where the file was cut
        assert body["error"]["code"] in ("corrupt_media", "unsupported_format", "empty_media"), body
    else:
        assert body["error"]["code"] == code, body
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/jobs").json()["jobs"] == []  # nothing was queued
    assert list((tmp_path / "data" / "jobs").iterdir()) == []  # and no upload was left behind


def test_missing_files_and_wrong_content_type(client: TestClient) -> None:
    assert_error(client.post("/v1/jobs", data={"engine": "warp"}), 415, "unsupported_media_type")
    only_fields = client.post("/v1/jobs", files={"engine": (None, "warp")})
    assert_error(only_fields, 422, "missing_file")
    one_file = client.post("/v1/jobs", files={"reference": ("r.jpg", WOMAN_JPG.read_bytes())})
    assert_error(one_file, 422, "missing_file")
    assert_error(
        client.post("/v1/jobs", content=b"{}", headers={"content-type": "application/json"}),
        415,
        "unsupported_media_type",
    )
    twice = [
        ("reference", ("a.jpg", WOMAN_JPG.read_bytes())),
        ("reference", ("b.jpg", WOMAN_JPG.read_bytes())),
    ]
    assert_error(client.post("/v1/jobs", files=twice), 422, "duplicate_field")
    garbage = client.post(
        "/v1/jobs",
        content=b"--x\r\nnot a header\r\n\r\n",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert garbage.status_code == 422


def test_over_long_video_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    settings.media.max_video_seconds = 1.0
    with TestClient(create_app(settings)) as client:
        assert_error(submit(client), 422, "too_long")


def test_upload_cap_stops_the_stream(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, max_reference_bytes=50_000))) as client:
        assert_error(submit(client), 413, "too_large")  # the 166 KB reference crosses the 50 KB cap

        def chunks():  # no Content-Length: only the streamed count can stop it
            yield b'--b\r\nContent-Disposition: form-data; name="reference"; filename="r.jpg"\r\n\r\n'
            for _ in range(100):
                yield b"\0" * 10_000

        streamed = client.post(
            "/v1/jobs", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
        )
        assert_error(streamed, 413, "too_large")
        assert list((tmp_path / "data" / "jobs").iterdir()) == []


@pytest.fixture()
def live_server(tmp_path: Path, data_dir: Path):
    """A real uvicorn on a free port, for requests a test client cannot send."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(make_settings(tmp_path)), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_a_2gb_declared_upload_is_refused_before_reading(live_server: int) -> None:
    with socket.create_connection(("127.0.0.1", live_server), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 2147483648\r\n\r\n--b\r\n"
        )
        started, reply = time.monotonic(), b""
        while b"}}" not in reply:  # headers and body may come in separate packets
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
        assert time.monotonic() - started < 10  # answered without waiting for the 2 GB
    reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '"code":"too_large"' in reply


def test_idempotency_key_returns_the_same_job(client: TestClient) -> None:
    first = submit(client, data={"max_frames": 4}, headers={"Idempotency-Key": "abc"})
    again = submit(client, data={"max_frames": 4}, headers={"Idempotency-Key": "abc"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = submit(client, data={"max_frames": 5}, headers={"Idempotency-Key": "abc"})
    assert_error(other, 422, "idempotency_key_reused")
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1
    assert submit(client, headers={"Idempotency-Key": "other"}).json()["id"] != first.json()["id"]


def test_list_filters_by_status_and_pages_with_a_cursor(client: TestClient) -> None:
    ids = [submit(client, data={"max_frames": 4}).json()["id"] for _ in range(5)]
    canceled = client.post(f"/v1/jobs/{ids[1]}/cancel").json()
    assert canceled["status"] == "canceled" and canceled["finished_at"]
    seen, cursor = [], None
    while True:
        page = client.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()["jobs"]
    assert {job["id"] for job in queued} == set(ids) - {ids[1]}
    assert [j["id"] for j in client.get("/v1/jobs", params={"status": "canceled"}).json()["jobs"]] == [ids[1]]
    assert_error(client.get("/v1/jobs", params={"status": "bogus"}), 422, "invalid_request")
    assert_error(client.get("/v1/jobs", params={"cursor": "!!"}), 422, "invalid_cursor")
    assert_error(client.get("/v1/jobs", params={"limit": 0}), 422, "invalid_request")


def test_cancel_delete_and_unknown_ids(client: TestClient, tmp_path: Path) -> None:
    job = submit(client).json()
    assert_error(client.delete(f"/v1/jobs/{job['id']}"), 409, "job_active")
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"  # idempotent
    assert (tmp_path / "data" / "jobs" / job["id"]).is_dir()
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert not (tmp_path / "data" / "jobs" / job["id"]).exists()
    for method, path in [
        ("get", "/v1/jobs/nope"),
        ("get", f"/v1/jobs/{job['id']}"),
        ("post", "/v1/jobs/nope/cancel"),
        ("delete", "/v1/jobs/nope"),
        ("get", "/v1/jobs/nope/video"),
        ("get", "/v1/jobs/nope/artifacts/skeleton"),
        ("get", "/v1/nothing-here"),
    ]:
        assert_error(getattr(client, method)(path), 404, "not_found")
    assert_error(client.put("/v1/jobs"), 405, "method_not_allowed")


def test_auth_isolates_keys(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, api_keys=[KEY_A, KEY_B], max_queued_per_key=2, rate_limit_per_minute=1000
    )
    with TestClient(create_app(settings)) as client:
        a, b = ({"Authorization": f"Bearer {k}"} for k in (KEY_A, KEY_B))
        assert_error(submit(client), 401, "unauthorized")
        assert_error(client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        job = submit(client, headers=a).json()
        assert client.get(f"/v1/jobs/{job['id']}", headers=a).status_code == 200
        assert_error(client.get(f"/v1/jobs/{job['id']}", headers=b), 404, "not_found")
        assert_error(client.post(f"/v1/jobs/{job['id']}/cancel", headers=b), 404, "not_found")
        assert_error(client.delete(f"/v1/jobs/{job['id']}", headers=b), 404, "not_found")
        assert client.get("/v1/jobs", headers=b).json()["jobs"] == []
        submit(client, headers=a)
        assert_error(submit(client, headers=a), 429, "queued_limit")
        assert client.get("/healthz").status_code == 200  # health needs no key
        assert client.get("/metrics").status_code == 200


def test_idempotency_keys_are_per_api_key(tmp_path: Path) -> None:
    """Security: key B sending key A's Idempotency-Key gets its own job, never A's (nor A's 422)."""
    settings = make_settings(tmp_path, api_keys=[KEY_A, KEY_B], rate_limit_per_minute=1000)
    with TestClient(create_app(settings)) as client:
        a, b = ({"Authorization": f"Bearer {k}"} for k in (KEY_A, KEY_B))
        job_a = submit(client, data={"max_frames": 4}, headers={**a, "Idempotency-Key": "shared"})
        same_body = submit(client, data={"max_frames": 4}, headers={**b, "Idempotency-Key": "shared"})
        assert job_a.status_code == same_body.status_code == 202
        assert same_body.json()["id"] != job_a.json()["id"]
        assert same_body.headers.get("idempotent-replayed") != "true"
        other_body = submit(client, data={"max_frames": 5}, headers={**b, "Idempotency-Key": "shared-2"})
        submit(client, data={"max_frames": 6}, headers={**a, "Idempotency-Key": "shared-2"})
        assert other_body.status_code == 202
        # each key replays its own job
        replay_a = submit(client, data={"max_frames": 4}, headers={**a, "Idempotency-Key": "shared"})
        replay_b = submit(client, data={"max_frames": 4}, headers={**b, "Idempotency-Key": "shared"})
        assert replay_a.json()["id"] == job_a.json()["id"]
        assert replay_b.json()["id"] == same_body.json()["id"]
        assert {j["id"] for j in client.get("/v1/jobs", headers=b).json()["jobs"]} == {
            same_body.json()["id"],
            other_body.json()["id"],
        }
        assert len(client.get("/v1/jobs", headers=a).json()["jobs"]) == 2


def test_another_keys_job_is_not_found_everywhere(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=[KEY_A, KEY_B], rate_limit_per_minute=1000)
    with TestClient(create_app(settings)) as client:
        a, b = ({"Authorization": f"Bearer {k}"} for k in (KEY_A, KEY_B))
        job = submit(client, headers=a).json()["id"]
        assert_error(client.get(f"/v1/jobs/{job}/video", headers=a), 409, "not_ready")
        for method, path in [
            ("get", f"/v1/jobs/{job}"),
            ("get", f"/v1/jobs/{job}/video"),
            ("head", f"/v1/jobs/{job}/video"),
            ("get", f"/v1/jobs/{job}/artifacts/skeleton"),
            ("post", f"/v1/jobs/{job}/cancel"),
            ("delete", f"/v1/jobs/{job}"),
        ]:
            response = getattr(client, method)(path, headers=b)
            assert response.status_code == 404, (method, path)
            if method != "head":
                assert_error(response, 404, "not_found")
        assert client.get("/v1/jobs", headers=b).json()["jobs"] == []
        assert client.get(f"/v1/jobs/{job}", headers=a).json()["status"] == "queued"  # untouched by B


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, api_keys=[KEY_A], rate_limit_per_minute=3))) as client:
        headers = {"Authorization": f"Bearer {KEY_A}"}
        for _ in range(3):
            assert client.get("/v1/jobs", headers=headers).status_code == 200
        limited = client.get("/v1/jobs", headers=headers)
        assert_error(limited, 429, "rate_limited")
        assert 1 <= int(limited.headers["retry-after"]) <= 61


def test_health_metrics_openapi_and_page(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"] == {
        "database": "ok",
        "queue": "ok",
        "workers": "no live worker",
    }
    submit(client)
    text = client.get("/metrics").text
    assert 'animate_jobs{status="queued"} 1' in text
    assert "animate_queue_depth 1" in text
    assert "animate_workers_live 0" in text
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"reference", "driving", "engine", "width", "webhook_url"} <= set(body["properties"])
    assert {"/v1/jobs/{job_id}/video", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/events"} <= set(
        spec["paths"]
    )
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_inline_poll_gives_up_on_a_locked_file_and_the_threaded_read_waits(tmp_path: Path) -> None:
    """A status poll reads SQLite on the event loop only while that cannot wait (WAL: readers do not wait
    on the worker's writes); on a locked file it raises ``ReadBusy`` within ~50 ms and the route retries
    in a thread, which waits for the lock."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    from server.models import Job
    from server.store import JobStore, ReadBusy

    path = tmp_path / "jobs.db"
    store = JobStore(f"sqlite:///{path}")
    store.create(Job(id="a" * 32, reference_name="r.jpg", driving_name="d.mp4"))
    assert store.poll_inline("a" * 32, "")[1] == 0  # queued, next to run
    store.engine.dispose()
    store._reader.dispose()

    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")  # the one way to shut readers out of a WAL file
    locker.execute("BEGIN EXCLUSIVE")
    locker.execute("UPDATE jobs SET step = 1")
    started = time.monotonic()
    with pytest.raises(ReadBusy):
        store.poll_inline("a" * 32, "")
    assert time.monotonic() - started < 1.0
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(store.get_with_position, "a" * 32, "")
        time.sleep(0.3)
        assert not waiting.done()
        locker.execute("COMMIT")
        locker.close()
        job, position = waiting.result(timeout=30)
    assert job.step == 1 and position == 0
    store.close()
