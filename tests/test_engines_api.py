"""``GET /v1/engines`` and ``GET /v1/limits``: what the web page greys out and the hints it shows.

Availability comes from the same checks ``--engine`` makes (the weights folder, a GPU), so the expectations
here are the folder states themselves: missing, empty, tiny weights in the real on-disk layout.
"""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from animate.settings import Settings
from server import create_app
from server.routes import engines as engines_route
from server.schemas import JobOptions


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    from animate.weights import CONVERTED_DIR
    from pipelines import AnimationPipeline
    from pipelines.testing import tiny_components

    root = tmp_path_factory.mktemp("weights")
    AnimationPipeline(**tiny_components(with_guidance_encoders=False)).save_pretrained(root / CONVERTED_DIR)
    return root


def get(settings: Settings, path: str, **kwargs) -> dict:
    with TestClient(create_app(settings)) as client:
        response = client.get(path, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def by_name(body: dict) -> dict[str, dict]:
    return {engine["name"]: engine for engine in body["engines"]}


def test_without_a_weights_folder_only_warp_runs_and_diffusion_says_why(tmp_path: Path) -> None:
    body = get(Settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "nowhere"), "/v1/engines")
    engines = by_name(body)
    assert engines["warp"]["available"] is True and engines["warp"]["reason"] is None
    assert engines["diffusion"]["available"] is False
    reason = engines["diffusion"]["reason"]
    assert "does not exist" in reason and "the server's weights folder" in reason
    assert str(tmp_path) not in reason and "nowhere" not in reason  # no server path reaches a visitor
    assert body["auto"] == "warp"


def test_an_empty_weights_folder_is_no_usable_weights(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    engines = by_name(
        get(Settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "weights"), "/v1/engines")
    )
    assert engines["diffusion"]["available"] is False
    assert "no usable diffusion weights" in engines["diffusion"]["reason"]


def test_tiny_weights_make_diffusion_available_and_a_gpu_makes_auto_pick_it(
    tmp_path: Path, tiny_weights: Path, monkeypatch
) -> None:
    import torch

    settings = Settings(data_dir=tmp_path / "data", weights_dir=tiny_weights)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    body = get(settings, "/v1/engines")
    diffusion = by_name(body)["diffusion"]
    assert diffusion["available"] is True and diffusion["reason"] is None
    assert (
        "CPU" in diffusion["note"] and "no CUDA GPU" in diffusion["note"]
    )  # explicit diffusion: slow, not refused
    assert body["auto"] == "warp"  # auto wants a GPU too

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    body = get(settings, "/v1/engines")
    assert by_name(body)["diffusion"] == {
        "name": "diffusion",
        "available": True,
        "reason": None,
        "note": None,
    }
    assert body["auto"] == "diffusion"


def test_every_engine_a_job_accepts_is_listed(tmp_path: Path) -> None:
    accepted = set(typing.get_args(JobOptions.model_fields["engine"].annotation)) - {"auto"}
    listed = by_name(get(Settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "none"), "/v1/engines"))
    assert set(listed) == accepted


def test_weights_put_in_place_while_the_server_runs_show_up(
    tmp_path: Path, tiny_weights: Path, monkeypatch
) -> None:
    import shutil

    weights = tmp_path / "weights"
    settings = Settings(data_dir=tmp_path / "data", weights_dir=weights)
    with TestClient(create_app(settings)) as client:
        assert by_name(client.get("/v1/engines").json())["diffusion"]["available"] is False
        shutil.copytree(tiny_weights, weights)
        # within the cache's lifetime the answer stays (no weights inspection per request) ...
        assert by_name(client.get("/v1/engines").json())["diffusion"]["available"] is False
        monkeypatch.setattr(engines_route, "ENGINES_TTL_SECONDS", 0.0)
        # ... and after it, the new weights count
        assert by_name(client.get("/v1/engines").json())["diffusion"]["available"] is True


def test_limits_are_the_servers_settings_in_user_words(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        server={"max_reference_bytes": 3_000_000},
        media={"max_file_bytes": 50_000_000, "max_video_seconds": 42, "max_video_frames": 999},
    )
    body = get(settings, "/v1/limits")
    assert body["reference_max_bytes"] == 3_000_000 and body["driving_max_bytes"] == 50_000_000
    assert (body["max_video_seconds"], body["max_video_frames"]) == (42, 999)
    assert body["image_formats"] == ["JPEG", "PNG", "WebP"]
    assert body["video_formats"] == ["MP4", "MOV", "MKV", "WebM", "AVI"]
    assert set(body["image_extensions"]) == {".jpg", ".jpeg", ".png", ".webp"}
    assert {".mp4", ".mov", ".mkv", ".webm", ".avi"} <= set(body["video_extensions"])
    # a reference cap above the general file cap is not a promise the server keeps
    capped = get(Settings(data_dir=tmp_path / "d2", server={"max_reference_bytes": 10**9}), "/v1/limits")
    assert capped["reference_max_bytes"] == Settings().media.max_file_bytes


def test_limits_follow_a_narrowed_container_list(tmp_path: Path) -> None:
    body = get(Settings(data_dir=tmp_path / "data", media={"video_containers": ("avi",)}), "/v1/limits")
    assert body["video_formats"] == ["AVI"] and body["video_extensions"] == [".avi"]


@pytest.mark.parametrize("path", ["/v1/engines", "/v1/limits"])
def test_with_api_keys_a_key_is_needed(tmp_path: Path, path: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", server={"api_keys": ["key-0123456789abcdef"]})
    with TestClient(create_app(settings)) as client:
        refused = client.get(path)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert client.get(path, headers={"Authorization": "Bearer key-0123456789abcdef"}).status_code == 200
