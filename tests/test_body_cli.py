"""``animate guidance``: output size parsing (fast) and the files it writes (slow, real media)."""

from __future__ import annotations

import json

import pytest

from animate.cli import run
from animate.cli.guidance import MAPS, parse_size
from animate.errors import AnimateError
from tests.conftest import DANCE, WOMAN_JPG


def test_size_defaults_to_the_reference_orientation():
    assert parse_size(None, (1080, 1920)) == (576, 1024)
    assert parse_size(None, (1920, 1080)) == (1024, 576)
    assert parse_size("288x512", (1, 1)) == (288, 512)
    for bad in ("288", "abc", "287x512", "8x8"):
        with pytest.raises(AnimateError):
            parse_size(bad, (1, 1))


def test_guidance_rejects_missing_files(tmp_path):
    assert run(["guidance", str(tmp_path / "nope.jpg"), str(DANCE), "-o", str(tmp_path / "out")]) == 2


@pytest.mark.slow
def test_guidance_writes_every_map(tmp_path, data_dir):
    from animate.media import open_video

    out = tmp_path / "guidance"
    code = run(
        ["guidance", str(WOMAN_JPG), str(DANCE), "-o", str(out), "--size", "144x256", "--max-frames", "8"]
    )
    assert code == 0
    for name in MAPS:
        video = open_video(out / f"{name}.mp4")
        assert (video.width, video.height, video.frame_count) == (144, 256, 8)
    body = json.loads((out / "body.json").read_text())
    assert len(body["transferred"]["frames"]) == 8 and body["output_size"] == [144, 256]
    assert len(json.loads((out / "poses.json").read_text())["frames"]) == 8
