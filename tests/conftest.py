from __future__ import annotations

import json
from pathlib import Path

import pytest

#: The shared sample media (see ../shared/data/SOURCES.md); never copied into the repository.
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DANCE = DATA / "driving" / "dance_musepose.mp4"
TALKING_HEAD = DATA / "driving" / "talking_head_animateanyone.mp4"
SKELETON_ONLY = DATA / "driving" / "skeleton_only_animateanyone.mp4"
WOMAN_JPG = DATA / "reference" / "woman_street_mimicmotion.jpg"
ANIME_PNG = DATA / "reference" / "anime_girl_musepose.png"
HERO_RGBA = DATA / "reference" / "hero_rgba_animateanyone.png"
#: Key/shape manifests of the published checkpoints (see ../shared/research/manifests/README.md).
MANIFESTS = DATA.parent / "research" / "manifests"


def load_manifest(name: str) -> dict:
    path = MANIFESTS / name
    if not path.is_file():
        pytest.fail(f"research manifest {path} not found")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared sample media not found at {DATA}")
    return DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on one torch thread (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    thread hand-offs cost more than they save, and far more when the cores are shared."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
