"""schemathesis against ``/openapi.json`` on a real uvicorn: no 5xx, and every answer is one the spec documents.

Each operation gets generated requests (valid and invalid ones); operations on one job are also called with
ids of real jobs (queued, canceled), so the documented 200/204 bodies are checked too, not only 404s.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from animate.settings import Settings
from server import create_app
from tests.conftest import DANCE, WOMAN_JPG

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
SHORT = {"max_frames": "4", "width": "288", "height": "512", "engine": "warp"}


class LiveApi:
    """The app on a free port in this process (no worker: jobs stay queued or get canceled)."""

    def __init__(self, data: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        settings_ = Settings(data_dir=data, media={"max_video_seconds": 60})
        config = uvicorn.Config(create_app(settings_), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.jobs: dict[str, str] = {}

    def __enter__(self) -> LiveApi:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def job(self, kind: str) -> str:
        """A real job id: ``queued`` (still queued when asked) or ``canceled`` (exists when asked)."""
        job_id = self.jobs.get(kind)
        if job_id is not None:
            current = self.http.get(f"/v1/jobs/{job_id}")
            if current.status_code == 200 and current.json()["status"] == kind:
                return job_id
        with WOMAN_JPG.open("rb") as ref, DANCE.open("rb") as drv:
            response = self.http.post("/v1/jobs", files={"reference": ref, "driving": drv}, data=SHORT)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        if kind == "canceled":
            assert self.http.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"
        self.jobs[kind] = job_id
        return job_id


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    from tests.conftest import DATA

    if not DATA.is_dir():
        pytest.fail(f"shared sample media not found at {DATA}")
    with LiveApi(tmp_path_factory.mktemp("schema") / "data") as api:
        yield api


# The spec the app serves at /openapi.json (built without starting it; the test below checks they agree).
SPEC = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(SPEC)


def _known_job_kind(case) -> str:
    """Which real job an operation on one job is also tried with (events must end: a finished job)."""
    if case.method == "GET" and case.path == "/v1/jobs/{job_id}":
        return "queued"
    if case.method == "POST":  # cancel
        return "queued"
    return "canceled"  # events, video, artifacts, delete


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_openapi_conformance(case, live_api: LiveApi) -> None:
    # /readyz answers a documented 503 while no worker is live (here, none ever is): that is no crash.
    checks = [c for c in CHECKS if c is not not_a_server_error] if case.path == "/readyz" else CHECKS
    case.call_and_validate(base_url=live_api.url, checks=checks)
    if "job_id" in (case.path_parameters or {}):
        case.path_parameters = {**case.path_parameters, "job_id": live_api.job(_known_job_kind(case))}
        case.call_and_validate(base_url=live_api.url, checks=checks)


def test_spec_documents_errors_and_the_upload_form(live_api: LiveApi) -> None:
    spec = live_api.http.get("/openapi.json").json()
    assert spec == SPEC
    paths = spec["paths"]
    error_ref = "#/components/schemas/ErrorResponse"
    delete = paths["/v1/jobs/{job_id}"]["delete"]["responses"]
    assert "job_active" in delete["409"]["description"]
    assert delete["409"]["content"]["application/json"]["schema"]["$ref"] == error_ref
    for path, methods in paths.items():
        for method, operation in methods.items():
            if path.startswith("/v1/"):  # FastAPI's own 422 schema would not match our error body
                unprocessable = operation["responses"]["422"]["content"]["application/json"]["schema"]
                assert unprocessable["$ref"] == error_ref, (method, path)
    form = paths["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["required"]) == {"reference", "driving"}
    assert form["properties"]["reference"]["format"] == "binary"
    assert {
        "engine",
        "width",
        "height",
        "fps",
        "max_frames",
        "seed",
        "steps",
        "guidance_scale",
        "webhook_url",
    } <= set(form["properties"])
    assert form["additionalProperties"] is False
    video = paths["/v1/jobs/{job_id}/video"]["get"]["responses"]
    assert {"200", "206", "404", "409", "410"} <= set(video)
    job = spec["components"]["schemas"]["JobOut"]["properties"]
    assert {
        "status",
        "progress",
        "queue_position",
        "attempts",
        "error",
        "expires_at",
        "expired",
        "urls",
    } <= set(job)
