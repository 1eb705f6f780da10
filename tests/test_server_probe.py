"""The upload probe runs in a child process with CPU, memory and wall-time limits.

Hostile behaviour (spinning, allocating without bound, hanging, crashing) ends in that child with a stable
code; the real bad-input files (image bomb, truncated mp4) keep their media codes through the sandbox.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import psutil
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from animate.errors import AnimateError
from animate.settings import MediaLimits, Settings
from server import create_app
from server.probe import ProbeLimits, probe_inputs, run_sandboxed
from tests.conftest import DANCE, WOMAN_JPG

LIMITS = ProbeLimits(timeout_seconds=20, cpu_seconds=1, memory_bytes=512 * 1024**2)


def _spin() -> None:
    while True:
        pass


def _allocate() -> None:
    blocks = []
    while True:
        blocks.append(bytearray(64 * 1024**2))


def _hang() -> None:
    time.sleep(600)


def _crash() -> None:
    os.abort()


def _code(target, args: tuple = (), limits: ProbeLimits = LIMITS) -> str | None:
    try:
        run_sandboxed(target, args, limits)
    except AnimateError as exc:
        return exc.code
    return None


def _no_children_left() -> bool:
    """Probe children are reaped; only the forkserver (and its resource tracker) may remain."""
    names = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True) if p.is_running()]
    return all("forkserver" in n or "resource_tracker" in n for n in names)


def test_real_files_pass_and_bad_ones_keep_their_codes(tmp_path: Path, data_dir: Path) -> None:
    media = MediaLimits()
    assert _code(probe_inputs, (WOMAN_JPG, DANCE, media)) is None

    bomb = tmp_path / "bomb.png"
    buffer = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(buffer, "PNG", optimize=True)
    bomb.write_bytes(buffer.getvalue())
    assert _code(probe_inputs, (bomb, DANCE, media)) == "too_large"

    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(DANCE.read_bytes()[:20_000])
    assert _code(probe_inputs, (WOMAN_JPG, truncated, media)) in ("corrupt_media", "unsupported_format")
    assert _no_children_left()


def test_a_spinning_reader_is_stopped_by_the_cpu_limit() -> None:
    started = time.monotonic()
    assert _code(_spin) == "probe_timeout"
    assert time.monotonic() - started < 15
    assert _no_children_left()


def test_an_allocating_reader_is_stopped_by_the_memory_limit() -> None:
    assert _code(_allocate) == "probe_failed"
    assert _no_children_left()


def test_a_hanging_reader_is_killed_at_the_wall_timeout() -> None:
    started = time.monotonic()
    assert _code(
        _hang, limits=ProbeLimits(timeout_seconds=1, cpu_seconds=5, memory_bytes=LIMITS.memory_bytes)
    ) == ("probe_timeout")
    assert time.monotonic() - started < 8
    assert _no_children_left()


def test_a_crashing_reader_is_a_422_not_a_dead_api() -> None:
    assert _code(_crash) == "probe_failed"


@pytest.mark.parametrize(
    ("server", "code"),
    [({"probe_timeout_seconds": 0.001}, "probe_timeout"), ({"probe_memory_bytes": 1024}, "probe_failed")],
    ids=["timeout", "memory"],
)
def test_the_api_answers_422_when_the_probe_hits_a_limit(
    tmp_path: Path, data_dir: Path, server: dict, code: str
) -> None:
    settings = Settings(data_dir=tmp_path / "data", server=server)
    with TestClient(create_app(settings)) as client:
        files = {"reference": WOMAN_JPG.open("rb"), "driving": DANCE.open("rb")}
        response = client.post("/v1/jobs", files=files, data={"engine": "warp"})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == code
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/jobs").json()["jobs"] == []
    assert list((tmp_path / "data" / "jobs").iterdir()) == []
